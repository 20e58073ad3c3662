"""Component folders on disk, read and written one way (DESIGN.md §2-3).

A component folder is `config.json` (the component's config dataclass) + `model.safetensors`. Weights load
one way: the module is built on the meta device (no memory, no random init), the file's tensors are checked
against it (missing, unexpected, shape) and become its parameters with `load_state_dict(assign=True)` (no
second copy). Every problem is a one-line `UserError` naming the file. safetensors only: nothing is
unpickled. The VAE (models/vae/io.py) and the transformer (pipelines/folder.py) load through here; the
text encoder keeps transformers' own files and loader (models/text.py).

Also here, because models/, pipelines/ and convert/ all write them: JSON files, config dataclasses from
JSON, the folder written under a temporary name and moved into place, and `count_params`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from longvideo.errors import UserError

CONFIG, WEIGHTS = "config.json", "model.safetensors"
FORMAT = 1  # a pipeline folder's model_index.json "_format": bump when the layout changes
T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)


def count_params(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- JSON and configs


def read_json(path: Path, missing: str = "missing") -> dict:
    """A JSON object file; a missing (`{path}: {missing}`), unreadable or non-object file is a UserError."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """A config dataclass from a JSON object, unknown or ill-typed fields as a one-line UserError."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object for {cls.__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown {cls.__name__} field(s) {unknown[:3]}")
    try:
        obj = cls(**data)
        if callable(getattr(obj, "validate", None)):
            obj.validate()
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: bad {cls.__name__} ({str(e).splitlines()[0]})") from None
    return obj


# ----------------------------------------------------------------------------- weights


def read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file (on the CPU); a missing or corrupt file is a UserError."""
    try:
        return load_file(path)
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise UserError(f"{path}: cannot read weights ({type(e).__name__})") from None


def assign_weights(model: M, sd: dict[str, Tensor], where: str | Path, dtype: torch.dtype) -> M:
    """`sd` (floating tensors cast to `dtype`) becomes the parameters and buffers of `model`, usually built
    on the meta device. Missing, unexpected or ill-shaped tensors are a one-line UserError naming `where`.
    A tensor already of `dtype` is used as it is (assign=True: no copy)."""
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or unexpected:
        raise UserError(
            f"{where}: weights do not match {CONFIG} ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    bad = [k for k in want if tuple(want[k].shape) != tuple(sd[k].shape)]
    if bad:
        raise UserError(
            f"{where}: weight {bad[0]} has shape {tuple(sd[bad[0]].shape)}, {CONFIG} implies "
            f"{tuple(want[bad[0]].shape)} ({len(bad)} mismatched)"
        )
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(cast, assign=True)
    return model


def load_component(
    folder: str | Path, config_cls: type[T], build: Callable[[T], M], dtype: torch.dtype, what: str
) -> M:
    """The module `build(config)` of a component folder, in eval mode, its tensors those of the file.

    `build` runs under the meta device; `what` ("VAE", "transformer") names the component in errors."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise UserError(f"no {what} at {str(folder)!r}: expected a folder with {CONFIG} + {WEIGHTS}")
    cfg = from_dict(config_cls, read_json(folder / CONFIG), str(folder / CONFIG))
    sd = read_weights(folder / WEIGHTS)
    with torch.device("meta"):
        model = build(cfg)
    return assign_weights(model, sd, folder, dtype).eval()


def save_component(
    model: nn.Module, folder: str | Path, component: str, dtype: torch.dtype | None = None
) -> Path:
    """Write `folder/config.json` (`model.cfg`, a dataclass) and `folder/model.safetensors` (on the CPU,
    floating tensors cast to `dtype` if given). The weights go to a temporary name first, so a reader never
    sees half a file. File modes are safetensors' own (0600) until a folder is published (AtomicFolder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(sd, tmp, metadata={"format": "pt", "component": component})
    tmp.replace(folder / WEIGHTS)
    write_json(folder / CONFIG, dataclasses.asdict(model.cfg))  # type: ignore[call-overload]
    return folder


# ----------------------------------------------------------------------------- output folders


class AtomicFolder:
    """Write a folder under a hidden temporary name next to it, then move it into place on success.

    An existing target is replaced only if it is a pipeline folder (has model_index.json) or empty, so a
    wrong path never wipes unrelated files; on failure the temporary folder is removed.
    """

    def __init__(self, target: str | os.PathLike[str]):
        self.target = Path(target)
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        t = self.target
        if t.exists() and not (t.is_dir() and ((t / "model_index.json").is_file() or not any(t.iterdir()))):
            raise UserError(f"{t} exists and is not a pipeline folder: refusing to overwrite it")
        if not t.parent.is_dir():
            raise UserError(f"output directory does not exist: {t.parent}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        _umask_permissions(self.tmp)
        old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
        if self.target.exists():
            self.target.rename(old)  # two renames: the target is never half-written
        self.tmp.rename(self.target)
        shutil.rmtree(old, ignore_errors=True)


def _umask_permissions(root: Path) -> None:
    """Files as the umask allows (e.g. 0644): safetensors writes 0600, which would hide a bundled model
    installed by one user from the others."""
    mask = os.umask(0)
    os.umask(mask)
    for d, _, files in os.walk(root):
        os.chmod(d, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(d, f), 0o666 & ~mask)


__all__ = [
    "FORMAT",
    "AtomicFolder",
    "assign_weights",
    "count_params",
    "from_dict",
    "load_component",
    "read_json",
    "read_weights",
    "save_component",
    "write_json",
]
