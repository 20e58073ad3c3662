"""Read a source checkpoint: where a component's config and weights are, and its state dict.

A component (the transformer, the VAE) is found in a source as
- a folder with `config.json` and its weights (`diffusion_pytorch_model.safetensors`, `model.safetensors`,
  a sharded `*.safetensors.index.json`, any single `*.safetensors`, or a single legacy `.pt/.pth/.ckpt/.bin`),
- or that folder's `NAME/` subfolder (diffusers' pipeline layout: `transformer/`, `vae/`),
- or a weights file with `config.json` next to it.

Weights are read as safetensors; legacy pickles only through `torch.load(weights_only=True)` (no code from
the file runs), unwrapped from the training wrappers the seeds save (`ema_state_dict` when non-empty, then
`state_dict`, `gen_model`, `model`, `module`; a `module.` key prefix is dropped). Every problem is a one-line
`UserError` naming the file.

A source is untrusted: every file read must resolve inside the folder the user named (`source_root`: SRC,
or the folder of a weights file given as SRC); symlinks out of it and shard names with a path are refused
(models/weights.py `confine`, `check_name`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from longvideo.errors import UserError
from longvideo.models.weights import check_name, confine, read_json, regular_file

PREFERRED = ("diffusion_pytorch_model.safetensors", "model.safetensors")
LEGACY = (".pt", ".pth", ".ckpt", ".bin")
WRAPPERS = ("state_dict", "gen_model", "model", "module")


def source_root(src: str | Path) -> Path:
    """The folder a source's files must stay inside: SRC itself, or the folder of a file given as SRC."""
    p = Path(src)
    return p.parent if p.is_file() else p


def read_config(path: Path, root: Path | None = None) -> dict:
    """A config.json as a dict (confined to `root`, default its folder); a missing, unreadable or non-object
    file is a UserError."""
    root = path.parent if root is None else root
    return read_json(path, missing="missing (a converter needs the source model's config.json)", root=root)


def component_dir(src: Path, name: str) -> Path | None:
    """The folder holding component `name`'s config.json: `src/name/` or `src` itself; None if neither."""
    for d in (src / name, src):
        if (d / "config.json").is_file():
            return d
    return None


def weights_file(folder: Path) -> Path:
    """The one weights file (or sharded index) of a component folder."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    if len(index) == 1:
        return index[0]
    for name in PREFERRED:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) or sorted(p for p in folder.iterdir() if p.suffix in LEGACY)
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"{folder}: no weights (expected a .safetensors file, or a legacy .pt/.ckpt/.bin)")
    names = ", ".join(p.name for p in found[:4])
    raise UserError(f"{folder}: several weight files ({names}): give the one to convert as SRC")


def locate(src: str | Path, name: str) -> tuple[Path, Path]:
    """(config.json, weights) of component `name` in a source file or folder; both resolve inside
    `source_root(src)`."""
    p = Path(src)
    if p.is_file():
        cfg = p.parent / "config.json"
        if not cfg.is_file():
            raise UserError(f"{p}: no config.json next to it (the converter needs the model's config)")
        found = cfg, p
    elif not p.is_dir():
        raise UserError(f"{p}: no such file or folder")
    else:
        folder = component_dir(p, name)
        if folder is None:
            raise UserError(f"{p}: no {name}/config.json or config.json (not a model folder)")
        confine(folder, p)  # before it is listed: a folder linked out of SRC is not even looked into
        found = folder / "config.json", weights_file(folder)
    for f in found:
        confine(f, source_root(p))
    return found


def read_state_dict(path: Path, root: Path | None = None) -> dict[str, Tensor]:
    """The tensors of a weights file (safetensors, sharded index, or a weights-only legacy pickle); the
    file (and every shard) must resolve inside `root` (default: the file's folder)."""
    root = path.parent if root is None else root
    if path.name.endswith(".safetensors.index.json"):
        return _read_sharded(path, root)
    try:
        real = regular_file(path, root)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    if path.suffix in LEGACY:
        return _read_legacy(path, real)
    try:
        return load_file(real)
    except SafetensorError as e:
        raise UserError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_sharded(index: Path, root: Path) -> dict[str, Tensor]:
    weight_map = read_config(index, root).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index}: no weight_map (not a sharded safetensors index)")
    shards = {check_name(s, index) for s in weight_map.values()}
    bad = sorted(s for s in shards if not s.endswith(".safetensors"))
    if bad:
        raise UserError(f"{index}: shard {bad[0]!r} is not a .safetensors file")
    sd: dict[str, Tensor] = {}
    for shard in sorted(shards):
        sd.update(read_state_dict(index.parent / shard, root))
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise UserError(f"{index}: {len(missing)} tensors listed but not in the shards, e.g. {missing[0]}")
    return sd


def _read_legacy(path: Path, real: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(real, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickle's many failure types: all mean "not a weights-only checkpoint"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(
            f"{path}: not a weights-only torch checkpoint ({type(e).__name__}: {first}); "
            "legacy files load only with torch.load(weights_only=True)"
        ) from None
    return unwrap(obj, path)


def unwrap(obj: object, where: Path) -> dict[str, Tensor]:
    """The state dict inside a training checkpoint's wrapper dicts."""
    while isinstance(obj, dict):  # the wrapper keys first: a wrapper may also hold a stray tensor (a step)
        ema = obj.get("ema_state_dict")
        inner = ema if isinstance(ema, dict) and ema else None
        inner = inner or next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise UserError(f"{where}: holds no state dict (a dict of tensors)")
    tensors = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}
    return tensors


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and any(isinstance(v, Tensor) for v in d.values())


__all__ = [
    "component_dir",
    "locate",
    "read_config",
    "read_state_dict",
    "source_root",
    "unwrap",
    "weights_file",
]
