"""Training checkpoints: one folder per step, written atomically, the last N kept.

    run/ckpt/step_000500/{model.safetensors, ema.safetensors, optim.pt, trainer.json}

A folder is written under a temporary name and renamed into place, so a crash (even `kill -9`) leaves
either the previous checkpoints or a complete new one, never a half-written one. Tensors go to safetensors;
optimizer state (nested dicts of tensors and numbers) to `torch.save`, read back with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(
    root: str | Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    objects: dict[str, Any],
    meta: dict,
    keep: int = 3,
) -> Path:
    """`tensors`: name -> flat state dict (safetensors); `objects`: name -> torch-saveable; `meta`: JSON."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, sd in tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, tmp / f"{name}.safetensors")
    for name, obj in objects.items():
        torch.save(obj, tmp / f"{name}.pt")
    (tmp / "trainer.json").write_text(json.dumps(meta | {"step": step}, indent=1))
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict]:
    path = Path(path)
    tensors = {p.stem: load_file(p) for p in path.glob("*.safetensors")}
    objects = {p.stem: torch.load(p, map_location="cpu", weights_only=True) for p in path.glob("*.pt")}
    meta = json.loads((path / "trainer.json").read_text())
    return tensors, objects, meta


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
