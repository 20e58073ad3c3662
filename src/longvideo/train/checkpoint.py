"""Training checkpoints: one folder per step, written atomically, verified when read, the last N kept.

    run/ckpt/step_000500/{model.safetensors, ema.safetensors, optim.safetensors, optim.json, trainer.json,
                          MANIFEST.json}

Tensors go to safetensors. Objects (optimizer and grad-scaler state, RNG state: nested dicts of tensors and
numbers) are split into their tensors (NAME.safetensors) and a JSON skeleton that names them (NAME.json), so
nothing in a checkpoint is a pickle. `MANIFEST.json`, written last, lists every file with its size and
SHA-256; a folder is written under a temporary name and renamed into place, so a crash (even `kill -9`)
leaves either the previous checkpoints or a complete new one. A checkpoint damaged later (a truncated file, a
disk error) fails its manifest check, and `newest_intact` falls back to the one before it, saying so.
Checkpoints written before the manifest existed (optimizer state as `*.pt`) are still read, weights-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from longvideo.errors import UserError

MANIFEST = "MANIFEST.json"
TMP_PREFIX = ".tmp_step_"


def save_checkpoint(
    root: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    objects: dict[str, Any],
    meta: dict,
    keep: int = 3,
) -> Path:
    """`tensors`: name -> flat state dict; `objects`: name -> nested state (dicts / lists / tuples of
    tensors, numbers, strings); `meta`: JSON. Older checkpoints beyond the newest `keep` are removed only
    after the new one is in place."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f"{TMP_PREFIX}{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, sd in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, tmp / f"{name}.safetensors")
        for name, obj in objects.items():
            flat: dict[str, torch.Tensor] = {}
            skeleton = _flatten(obj, flat)
            save_file(flat, tmp / f"{name}.safetensors")
            (tmp / f"{name}.json").write_text(json.dumps(skeleton))
        (tmp / "trainer.json").write_text(json.dumps(meta | {"step": step}, indent=1))
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # an interrupted save leaves nothing behind
        raise
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def sweep_temporary(root: str | Path) -> list[str]:
    """Remove half-written checkpoint folders left by a killed run (call while holding the run's lock)."""
    root = Path(root)
    if not root.is_dir():
        return []
    gone = [p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(TMP_PREFIX)]
    for name in gone:
        shutil.rmtree(root / name, ignore_errors=True)
    return gone


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def verify(path: str | Path) -> str | None:
    """None if the checkpoint folder is intact, else what is wrong with it (one line)."""
    path = Path(path)
    man = path / MANIFEST
    if any(p.is_symlink() for p in path.iterdir()):
        return "it holds a symlink (a checkpoint's files are its own)"
    if not man.is_file():
        if (path / "trainer.json").is_file() and list(path.glob("*.pt")):
            return None  # the format before manifests: checked by loading it
        return f"no {MANIFEST}"
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is not valid"
    for name, want in files.items():
        p = path / name
        if not isinstance(name, str) or "/" in name or name.startswith(".") or p.is_symlink():
            return f"{name} is not a plain file of the checkpoint (a link or a path out of it)"
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want.get("size"):
            return f"{name} has {p.stat().st_size} bytes, {want.get('size')} were written"
        if _sha256(p) != want.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def newest_intact(root: str | Path) -> Path | None:
    """The newest checkpoint that verifies (by its manifest; one without, by loading it); damaged newer ones
    are reported on stderr and skipped.
    None when there is no checkpoint; a UserError when there are some but none is intact."""
    ckpts = list_checkpoints(root)
    for path in reversed(ckpts):
        problem = verify(path)
        if problem is None and not (path / MANIFEST).is_file():  # the format before manifests: a load
            try:
                load_checkpoint(path)
            except Exception as e:  # a legacy checkpoint without manifest that does not load
                problem = f"does not load ({type(e).__name__})"
        if problem is None:
            return path
        print(f"longvideo: checkpoint {path.name} is damaged ({problem}); trying the one before",
              file=sys.stderr, flush=True)  # fmt: skip
    if ckpts:
        raise UserError(
            f"no intact checkpoint in {root} ({len(ckpts)} damaged): move the folder away to start afresh"
        )
    return None


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict]:
    """(tensors, objects, meta) of one checkpoint folder."""
    path = Path(path)
    listed = None  # with a manifest, only the files it lists are read
    if (path / MANIFEST).is_file():
        listed = set(json.loads((path / MANIFEST).read_text())["files"])
    files = [p for p in sorted(path.iterdir()) if listed is None or p.name in listed]
    skeletons = {p.stem: p for p in files if p.suffix == ".json" and p.name not in (MANIFEST, "trainer.json")}
    tensors = {p.stem: load_file(p) for p in files if p.suffix == ".safetensors" and p.stem not in skeletons}
    objects = {name: _unflatten(json.loads(p.read_text()), load_file(path / f"{name}.safetensors"))
               for name, p in skeletons.items()}  # fmt: skip
    for p in (f for f in files if f.suffix == ".pt"):  # checkpoints written before this format
        objects[p.stem] = torch.load(p, map_location="cpu", weights_only=True)
    meta = json.loads((path / "trainer.json").read_text())
    return tensors, objects, meta


# ----------------------------------------------------------------------------- objects without pickles


def _flatten(obj: Any, flat: dict[str, torch.Tensor]) -> Any:
    """A JSON skeleton of `obj`; its tensors go into `flat` under the keys the skeleton names."""
    if isinstance(obj, torch.Tensor):
        key = str(len(flat))
        flat[key] = obj.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(obj, dict):  # keys may be ints (optimizer state of unnamed parameters): keep their type
        return {"__dict__": [[k, _flatten(v, flat)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, flat) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, flat) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} without pickling it")


def _unflatten(node: Any, flat: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return flat[node["__tensor__"]]
        if "__tuple__" in node:
            return tuple(_unflatten(v, flat) for v in node["__tuple__"])
        return {k: _unflatten(v, flat) for k, v in node["__dict__"]}
    if isinstance(node, list):
        return [_unflatten(v, flat) for v in node]
    return node


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
