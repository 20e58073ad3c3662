"""Component folders on disk, read and written one way (DESIGN.md §2-3).

A component folder is `config.json` (the component's config dataclass) + `model.safetensors`. Weights load
one way: the module is built on the meta device (no memory, no random init), the file's tensors are checked
against it (missing, unexpected, shape) and become its parameters with `load_state_dict(assign=True)` (no
second copy). Every problem is a one-line `UserError` naming the file. safetensors only: nothing is
unpickled. The VAE (models/vae/io.py) and the transformer (pipelines/folder.py) load through here; the
text encoder keeps transformers' own files and loader (models/text.py).

Also here, because models/, pipelines/ and convert/ all use them: confined reads (a model folder is
untrusted: every file read or copied from it must resolve inside the folder the user named, symlinks
followed and `..` refused; `confine`, `check_name`, `copy_file`), JSON files, config dataclasses from JSON
(field types checked), the folder written under a temporary name and moved into place (`AtomicFolder`), and
`count_params`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import stat
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from longvideo.errors import UserError

CONFIG, WEIGHTS = "config.json", "model.safetensors"
FORMAT = 1  # a pipeline folder's model_index.json "_format": bump when the layout changes
MAX_JSON_BYTES = 64 << 20  # a config / index JSON file larger than this is refused before it is parsed
T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)


def count_params(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- confined reads


def confine(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """`path` with every symlink resolved, if that lies inside `root` (resolved too); else a UserError.

    `root` is the folder the user named; a file of it that is a symlink out of it (to /etc/shadow, to a
    neighbour's files) or a name with `..` in it is refused. One exception: a Hugging Face hub cache snapshot
    (`models--X/snapshots/REV/`) links its files to `models--X/blobs/`, which counts as inside."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    allowed = [top]
    hub = next((a for a in (top, *top.parents) if a.name == "snapshots"), None)
    if hub is not None and hub.parent.name.startswith("models--"):
        allowed.append(hub.parent / "blobs")
    if not any(real == a or real.is_relative_to(a) for a in allowed):
        raise UserError(f"{path}: resolves to {real}, outside {root} (a symlink or '..' out of the folder)")
    return real


def check_name(name: object, where: str | os.PathLike[str]) -> str:
    """A file name a folder's own JSON gives (a shard of an index): a plain name in that folder, no path."""
    if not isinstance(name, str) or not name or name in (".", "..") or re.search(r"[/\\\x00]", name):
        raise UserError(f"{where}: {name!r} is not a plain file name in its folder (paths, '..' are refused)")
    return name


def regular_file(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """The resolved path of an existing regular file (confined to `root` when given): a FIFO or a device
    would hang or never end a read. A missing file raises FileNotFoundError, for the caller to word."""
    real = confine(path, root) if root is not None else Path(os.path.realpath(path))
    st = os.stat(real)  # FileNotFoundError passes through
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: not a regular file")
    return real


def copy_file(src: Path, root: Path, dst: Path) -> None:
    """Copy `src` (confined to `root`) to the new file `dst` with no wider permissions than the source's
    (and never executable): a copied 0600 file stays 0600."""
    real = regular_file(src, root)
    mode = stat.S_IMODE(os.stat(real).st_mode) & 0o666
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # the umask narrows it further
    with open(real, "rb") as fin, os.fdopen(fd, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


# ----------------------------------------------------------------------------- JSON and configs


def read_json(path: Path, missing: str = "missing", root: str | os.PathLike[str] | None = None) -> dict:
    """A JSON object file (confined to `root` when given); a missing (`{path}: {missing}`), oversized,
    unreadable or non-object file is a UserError."""
    try:
        real = regular_file(path, root)
        size = os.stat(real).st_size
        if size > MAX_JSON_BYTES:
            raise UserError(f"{path}: {size} bytes, too large for a JSON config (at most {MAX_JSON_BYTES})")
        data = json.loads(real.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{path}: unreadable JSON ({type(e).__name__})") from None
    except ValueError as e:  # NaN / Infinity (not JSON), a huge integer
        if isinstance(e, UserError):
            raise
        raise UserError(f"{path}: unreadable JSON ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """A config dataclass from a JSON object; unknown or ill-typed fields (by the field annotations: an int
    field takes no float, string or bool; a float field takes no NaN) are a one-line UserError."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object for {cls.__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown {cls.__name__} field(s) {unknown[:3]}")
    hints = typing.get_type_hints(cls)
    for k, v in data.items():
        if not _has_type(v, hints.get(k, Any)):
            raise UserError(f"{where}: {cls.__name__}.{k} must be {_type_name(hints[k])}, got {v!r:.60}")
    try:
        obj = cls(**data)
        if callable(getattr(obj, "validate", None)):
            obj.validate()
    except (TypeError, ValueError, ArithmeticError, IndexError, KeyError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{where}: bad {cls.__name__} ({msg})") from None
    return obj


def _has_type(v: Any, tp: Any) -> bool:
    """Whether a JSON value fits a field annotation; annotations this does not know accept anything."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(v, a) for a in args)
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if tp is str:
        return isinstance(v, str)
    if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, float]: one type per place
        return isinstance(v, list | tuple) and len(v) == len(args) and all(map(_has_type, v, args))
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(v, list | tuple) and (not args or all(_has_type(x, args[0]) for x in v))
    if origin is dict or tp is dict:
        return isinstance(v, dict)
    return True


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


# ----------------------------------------------------------------------------- weights


def read_weights(path: Path, root: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """The tensors of a safetensors file (on the CPU; confined to `root` when given); a missing or corrupt
    file is a UserError."""
    try:
        return load_file(regular_file(path, root))
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
    bad = [k for k in want if want[k].is_floating_point() != sd[k].is_floating_point()]
    if bad:
        raise UserError(
            f"{where}: weight {bad[0]} is {sd[bad[0]].dtype}, the model needs "
            f"{'a floating' if want[bad[0]].is_floating_point() else 'an integer'} tensor ({len(bad)} such)"
        )
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    try:
        model.load_state_dict(cast, assign=True)
    except RuntimeError as e:  # what the checks above did not foresee: still the file's fault
        raise UserError(f"{where}: weights do not load ({str(e).strip().splitlines()[-1][:200]})") from None
    return model


def load_component(
    folder: str | Path,
    config_cls: type[T],
    build: Callable[[T], M],
    dtype: torch.dtype,
    what: str,
    root: str | os.PathLike[str] | None = None,
) -> M:
    """The module `build(config)` of a component folder, in eval mode, its tensors those of the file.

    `build` runs under the meta device; `what` ("VAE", "transformer") names the component in errors. Its
    files must resolve inside `root` (default: the folder itself)."""
    folder = Path(folder)
    root = folder if root is None else root
    if not (folder / CONFIG).is_file():
        raise UserError(f"no {what} at {str(folder)!r}: expected a folder with {CONFIG} + {WEIGHTS}")
    cfg = from_dict(config_cls, read_json(folder / CONFIG, root=root), str(folder / CONFIG))
    try:
        with torch.device("meta"):
            model = build(cfg)
    except (TypeError, ValueError, RuntimeError, ArithmeticError, IndexError, KeyError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{folder / CONFIG}: cannot build the {what} from it ({msg})") from None
    sd = read_weights(folder / WEIGHTS, root)
    return assign_weights(model, sd, folder, dtype).eval()


def save_component(
    model: nn.Module, folder: str | Path, component: str, dtype: torch.dtype | None = None
) -> Path:
    """Write `folder/config.json` (`model.cfg`, a dataclass) and `folder/model.safetensors` (on the CPU,
    floating tensors cast to `dtype` if given). The weights go to a temporary name first, so a reader never
    sees half a file; they get the modes the umask allows (safetensors writes 0600)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(sd, tmp, metadata={"format": "pt", "component": component})
    umask_modes(tmp)
    tmp.replace(folder / WEIGHTS)
    write_json(folder / CONFIG, dataclasses.asdict(model.cfg))  # type: ignore[call-overload]
    return folder


# ----------------------------------------------------------------------------- output folders


class AtomicFolder:
    """Write a folder under a hidden temporary name next to it (`.NAME.tmp-PID`), then move it into place.

    Nothing of an existing target is touched until the new folder is complete: then the old one is renamed
    aside (`.NAME.old-PID`), the new one renamed into place, and the old one deleted. An existing non-empty
    target is refused unless `overwrite`, and even then replaced only if it holds `marker` (it is a `kind`
    this writer makes), so a wrong path never wipes unrelated files. A target that is, holds or lies in
    one of `inputs` is refused (replacing it would delete what is being read). Temporary folders of earlier
    runs that were killed (their PID is gone) are swept first; on failure the temporary folder is removed.
    """

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        inputs: Iterable[str | os.PathLike[str] | None] = (),
        marker: str = "model_index.json",
        kind: str = "pipeline folder",
    ):
        self.target = Path(target)
        self.overwrite, self.marker, self.kind = overwrite, marker, kind
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.tmp = self._sibling("tmp", os.getpid())

    def _sibling(self, kind: str, pid: int) -> Path:
        return self.target.parent / f".{self.target.name}.{kind}-{pid}"

    def __enter__(self) -> Path:
        t = self.target
        if not t.parent.is_dir():
            raise UserError(f"output directory does not exist: {t.parent}")
        self._sweep()
        out = Path(os.path.realpath(t))
        for src in self.inputs:
            real = Path(os.path.realpath(src))
            if out == real or out.is_relative_to(real) or real.is_relative_to(out):
                how = "is" if out == real else "is inside" if out.is_relative_to(real) else "holds"
                raise UserError(f"{t} {how} the input {src}: write the output to another folder")
        if t.exists() or t.is_symlink():
            if not t.is_dir():
                raise UserError(f"{t} exists and is not a folder: refusing to replace it")
            if any(t.iterdir()):
                if not self.overwrite:
                    raise UserError(f"{t} exists and is not empty: give --overwrite to replace it")
                if not (t / self.marker).is_file():
                    raise UserError(
                        f"{t} is not a {self.kind} (no {self.marker}): refusing to replace it (remove it "
                        "yourself, or write to another folder)"
                    )
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self._sibling("old", os.getpid())
        had = self.target.exists() or self.target.is_symlink()
        if had:
            self.target.rename(old)  # two renames: the target is never half-written
        try:
            self.tmp.rename(self.target)
        except BaseException:
            if had:
                old.rename(self.target)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if had and old.is_symlink():
            old.unlink()  # the target was a link to a folder: the folder it named is not ours to delete
        elif had:
            shutil.rmtree(old, ignore_errors=True)

    def _sweep(self) -> None:
        """Remove `.NAME.tmp-PID` folders of dead processes; a dead one's `.NAME.old-PID` is removed if the
        target is in place, else renamed back (that run died between its two renames)."""
        pattern = re.compile(rf"\.{re.escape(self.target.name)}\.(tmp|old)-(\d+)")
        for p in sorted(self.target.parent.iterdir()):
            m = pattern.fullmatch(p.name)
            if m is None or _alive(int(m[2])) or p.is_symlink() or not p.is_dir():
                continue
            if m[1] == "old" and not (self.target.exists() or self.target.is_symlink()):
                p.rename(self.target)
            else:
                shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (ours counts as alive: it is this run)."""
    if pid <= 0 or pid == os.getpid():
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True
    return True


def umask_modes(path: Path) -> None:
    """Give a file we wrote (or every file and folder under a folder we wrote) the modes the umask allows,
    e.g. 0644: safetensors writes 0600, which would hide a bundled model installed by one user from the
    others. Never used on copies of a source's files, which keep their own narrower modes (`copy_file`)."""
    mask = os.umask(0)
    os.umask(mask)
    if path.is_file():
        os.chmod(path, 0o666 & ~mask)
        return
    for d, _, files in os.walk(path):
        os.chmod(d, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(d, f), 0o666 & ~mask)


__all__ = [
    "FORMAT",
    "MAX_JSON_BYTES",
    "AtomicFolder",
    "assign_weights",
    "check_name",
    "confine",
    "copy_file",
    "count_params",
    "from_dict",
    "load_component",
    "read_json",
    "read_weights",
    "regular_file",
    "save_component",
    "umask_modes",
    "write_json",
]
