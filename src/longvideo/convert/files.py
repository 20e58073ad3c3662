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
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from longvideo.errors import UserError
from longvideo.models.weights import read_json

PREFERRED = ("diffusion_pytorch_model.safetensors", "model.safetensors")
LEGACY = (".pt", ".pth", ".ckpt", ".bin")
WRAPPERS = ("state_dict", "gen_model", "model", "module")


def read_config(path: Path) -> dict:
    """A config.json as a dict; a missing, unreadable or non-object file is a UserError."""
    return read_json(path, missing="missing (a converter needs the source model's config.json)")


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
    """(config.json, weights) of component `name` in a source file or folder."""
    p = Path(src)
    if p.is_file():
        cfg = p.parent / "config.json"
        if not cfg.is_file():
            raise UserError(f"{p}: no config.json next to it (the converter needs the model's config)")
        return cfg, p
    if not p.is_dir():
        raise UserError(f"{p}: no such file or folder")
    folder = component_dir(p, name)
    if folder is None:
        raise UserError(f"{p}: no {name}/config.json or config.json (not a model folder)")
    return folder / "config.json", weights_file(folder)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file (safetensors, sharded index, or a weights-only legacy pickle)."""
    if path.name.endswith(".safetensors.index.json"):
        return _read_sharded(path)
    if path.suffix in LEGACY:
        return _read_legacy(path)
    try:
        return load_file(path)
    except SafetensorError as e:
        raise UserError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_sharded(index: Path) -> dict[str, Tensor]:
    weight_map = read_config(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index}: no weight_map (not a sharded safetensors index)")
    sd: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        sd.update(read_state_dict(index.parent / shard))
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise UserError(f"{index}: {len(missing)} tensors listed but not in the shards, e.g. {missing[0]}")
    return sd


def _read_legacy(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
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


__all__ = ["component_dir", "locate", "read_config", "read_state_dict", "unwrap", "weights_file"]
