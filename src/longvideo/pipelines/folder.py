"""The pipeline folder (DESIGN.md §3, diffusers-like), read and written one component at a time:

    model_index.json          component classes, the text encoder's settings, format version
    vae/                      config.json (VAEConfig) + model.safetensors            (models/vae/io.py)
    transformer/              config.json (DiTConfig) + model.safetensors
    text_encoder/ tokenizer/  transformers' own files                              (models/text.py)
    scheduler/config.json     {"diffusion": DiffusionConfig, "defaults": PipelineDefaults}

A bundled name (`BUNDLED`: `shapes`) is a folder inside the package, `longvideo/assets/<name>/`; names
resolve here, not in models/ (`resolve_pipeline`, `resolve_component`, `load_vae`). The VAE and the
transformer load one way (models/weights.py): built on the meta device, checked, `load_state_dict(
assign=True)`. A seed's source folder loads too, converted in memory by convert/output.py (which imports
nothing from here). A folder is untrusted: every file read resolves inside the folder named (`confine`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from longvideo import __version__
from longvideo.errors import UserError
from longvideo.models.dit import DiTConfig, VideoDiT
from longvideo.models.text import TextEncoder, TextEncoderConfig
from longvideo.models.vae.io import load_vae as load_vae_folder
from longvideo.models.vae.io import save_vae
from longvideo.models.vae.model import CausalVAE
from longvideo.models.weights import (
    FORMAT,
    AtomicFolder,
    confine,
    from_dict,
    load_component,
    read_json,
    save_component,
    write_json,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUNDLED = ("shapes",)  # pipeline folders shipped inside the package
COMPONENT_NAMES = {"vae": "VAE", "transformer": "transformer"}


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


def resolve_component(name_or_path: str | os.PathLike[str], component: str) -> Path:
    """A bundled model name (its `component/` folder), a pipeline folder (its `component/`), or a component
    folder (config.json + model.safetensors) itself; `component` is "vae" or "transformer"."""
    p = Path(name_or_path)
    if str(name_or_path) in BUNDLED and not p.exists():
        p = ASSETS / str(name_or_path)
    if (p / component / "config.json").is_file():
        confine(p / component, p)  # its files are then confined to it
        return p / component
    if (p / "config.json").is_file():
        return p
    raise UserError(
        f"no {COMPONENT_NAMES[component]} at {str(name_or_path)!r}: expected a bundled name "
        f"({', '.join(BUNDLED)}), a pipeline folder with {component}/, or a folder with config.json + "
        "model.safetensors"
    )


def load_vae(name_or_path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> CausalVAE:
    """The VAE of a bundled model name (`shapes`), a pipeline folder (its vae/) or a VAE folder."""
    return load_vae_folder(resolve_component(name_or_path, "vae"), dtype)


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
    index = read_json(root / "model_index.json", root=root)
    fmt = index.get("_format")
    if index.get("_class_name") != class_name or not isinstance(fmt, int) or isinstance(fmt, bool):
        raise UserError(f"{root / 'model_index.json'}: not a {class_name} folder")
    if fmt > FORMAT:
        raise UserError(f"{root}: pipeline format {fmt} is newer than this version reads")
    te = index.get("text_encoder_config", {})
    if not isinstance(te, dict):
        raise UserError(f"{root / 'model_index.json'}: text_encoder_config must be a JSON object")
    te_cfg = from_dict(
        TextEncoderConfig, {**te, "path": str(root)}, f"{root / 'model_index.json'} text_encoder_config"
    )
    for part in ("vae", "transformer", "scheduler"):
        confine(root / part, root)  # a component folder linked out of the pipeline folder is refused
    sched_file = root / "scheduler" / "config.json"
    sched = read_json(sched_file, root=root)
    vae = load_vae_folder(root / "vae", dtype)
    transformer = load_transformer(root / "transformer", dtype=dtype)
    with _no_transformers_progress():
        text_encoder = TextEncoder.from_pretrained(root, cfg=te_cfg)
    return vae, transformer, text_encoder, sched, str(sched_file)


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
    with AtomicFolder(folder, overwrite=True) as tmp:  # replaces a pipeline folder, never other files
        save_vae(vae, tmp / "vae")
        save_transformer(transformer, tmp / "transformer")
        with _no_transformers_progress():
            text_encoder.save_pretrained(tmp)  # text_encoder/ + tokenizer/
        write_json(tmp / "scheduler" / "config.json", sched)
        write_json(tmp / "model_index.json", index)  # last: its presence marks a complete folder


# ----------------------------------------------------------------------------- transformer


def load_transformer(folder: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> VideoDiT:
    """The transformer of a transformer folder (config.json + model.safetensors), frozen, in eval mode."""
    return load_component(folder, DiTConfig, VideoDiT, dtype, "transformer").requires_grad_(False)


def save_transformer(model: VideoDiT, folder: Path) -> None:
    save_component(model, folder, "transformer")


__all__ = [
    "ASSETS",
    "BUNDLED",
    "FORMAT",
    "AtomicFolder",
    "from_dict",
    "load_parts",
    "load_transformer",
    "load_vae",
    "read_json",
    "resolve_component",
    "resolve_pipeline",
    "save_parts",
    "save_transformer",
    "write_json",
]
