"""The pipeline folder (DESIGN.md §3, diffusers-like), read and written one component at a time:

    model_index.json          component classes, the text encoder's settings, format version
    vae/                      config.json (VAEConfig) + model.safetensors            (models/vae/io.py)
    transformer/              config.json (DiTConfig) + model.safetensors
    text_encoder/ tokenizer/  transformers' own files                              (models/text.py)
    scheduler/config.json     {"diffusion": DiffusionConfig, "defaults": PipelineDefaults}

A bundled name (`shapes`) is a folder inside the package, `longvideo/assets/<name>/`. Weights load one way:
built on the meta device, `load_state_dict(assign=True)`, missing or unexpected keys refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from longvideo import __version__
from longvideo.errors import UserError
from longvideo.models.dit import DiTConfig, VideoDiT, build_dit
from longvideo.models.text import TextEncoder, TextEncoderConfig
from longvideo.models.vae.io import ASSETS, BUNDLED, load_vae, save_vae
from longvideo.models.vae.model import CausalVAE

FORMAT = 1  # model_index.json "_format": bump when the layout changes
T = TypeVar("T")


def resolve_pipeline(path_or_name: str | os.PathLike[str]) -> Path:
    """A pipeline folder, or a bundled model's folder inside the package."""
    p = Path(path_or_name)
    name = str(path_or_name)
    if not p.exists() and os.sep not in name and "/" not in name:
        if (ASSETS / name / "model_index.json").is_file():
            return ASSETS / name
        if name in BUNDLED:
            raise UserError(
                f"bundled model {name!r} is not installed in this build (not available yet: "
                "give a pipeline folder instead)"
            )
        raise UserError(f"no pipeline {name!r}: not a folder, and not a bundled model ({', '.join(BUNDLED)})")
    if not (p / "model_index.json").is_file():
        raise UserError(f"no pipeline at {name!r}: expected a folder with model_index.json")
    return p


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


# ----------------------------------------------------------------------------- the whole folder


def load_parts(
    path_or_name: str | os.PathLike[str], class_name: str, dtype: torch.dtype = torch.float32
) -> tuple[CausalVAE, VideoDiT, TextEncoder, dict, str]:
    """(vae, transformer, text encoder, the scheduler JSON, its path) of a pipeline folder or bundled name,
    or of a seed's source folder (OSP v1.2, EasyAnimate v3), converted in memory (convert/output.py)."""
    from longvideo.convert.output import load_source_parts  # reads two JSON files when it is not a source

    with _no_transformers_progress():
        source = load_source_parts(path_or_name, dtype)
    if source is not None:
        return source
    root = resolve_pipeline(path_or_name)
    index = read_json(root / "model_index.json")
    if index.get("_class_name") != class_name or not isinstance(index.get("_format"), int):
        raise UserError(f"{root / 'model_index.json'}: not a {class_name} folder")
    if index["_format"] > FORMAT:
        raise UserError(f"{root}: pipeline format {index['_format']} is newer than this version reads")
    vae = load_vae(root / "vae", dtype=dtype)
    transformer = load_transformer(root / "transformer", dtype=dtype)
    te = {**index.get("text_encoder_config", {}), "path": str(root)}
    te_cfg = from_dict(TextEncoderConfig, te, f"{root / 'model_index.json'} text_encoder_config")
    with _no_transformers_progress():
        text_encoder = TextEncoder.from_pretrained(root, cfg=te_cfg)
    sched_file = root / "scheduler" / "config.json"
    return vae, transformer, text_encoder, read_json(sched_file), str(sched_file)


@contextlib.contextmanager
def _no_transformers_progress() -> Iterator[None]:
    """transformers 5 draws a "Loading weights" bar per model: a second line on stderr before any later
    one-line error of the CLI, and noise for a part of a pipeline."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def save_parts(
    folder: str | os.PathLike[str],
    class_name: str,
    vae: CausalVAE,
    transformer: VideoDiT,
    text_encoder: TextEncoder,
    sched: dict,
) -> None:
    te_cfg = {k: v for k, v in dataclasses.asdict(text_encoder.cfg).items() if k != "path"}
    index = {
        "_class_name": class_name,
        "_format": FORMAT,
        "_longvideo_version": __version__,
        "vae": ["longvideo", type(vae).__name__],
        "transformer": ["longvideo", type(transformer).__name__],
        "text_encoder": ["transformers", type(text_encoder.model).__name__],
        "tokenizer": ["transformers", type(text_encoder.tokenizer).__name__],
        "scheduler": ["longvideo", "DiffusionConfig"],
        "text_encoder_config": te_cfg,  # max_length etc.: transformers' config.json has no place for them
    }
    with AtomicFolder(folder) as tmp:
        save_vae(vae, tmp / "vae")
        save_transformer(transformer, tmp / "transformer")
        with _no_transformers_progress():
            text_encoder.save_pretrained(tmp)  # text_encoder/ + tokenizer/
        write_json(tmp / "scheduler" / "config.json", sched)
        write_json(tmp / "model_index.json", index)  # last: its presence marks a complete folder


# ----------------------------------------------------------------------------- transformer


def load_transformer(folder: Path, dtype: torch.dtype = torch.float32) -> VideoDiT:
    cfg = from_dict(DiTConfig, read_json(folder / "config.json"), str(folder / "config.json"))
    try:
        sd = load_file(folder / "model.safetensors")
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise UserError(f"{folder / 'model.safetensors'}: cannot read weights ({type(e).__name__})") from None
    model = build_dit(cfg, device="meta")
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or unexpected:
        raise UserError(
            f"{folder}: weights do not match config.json ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    bad = [k for k in want if tuple(want[k].shape) != tuple(sd[k].shape)]
    if bad:
        raise UserError(
            f"{folder}: weight {bad[0]} has shape {tuple(sd[bad[0]].shape)}, config.json implies "
            f"{tuple(want[bad[0]].shape)} ({len(bad)} mismatched)"
        )
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, assign=True)
    return model.eval().requires_grad_(False)


def save_transformer(model: VideoDiT, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt", "component": "transformer"})
    write_json(folder / "config.json", dataclasses.asdict(model.cfg))


# ----------------------------------------------------------------------------- writing


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


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
