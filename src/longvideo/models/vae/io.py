"""Save and load a VAE component folder: `config.json` + `model.safetensors` (DESIGN.md §3).

Weights load one way: build on the meta device, `load_state_dict(assign=True)`, refuse missing or
unexpected keys. Bundled models live in the package (`longvideo/assets/<name>/vae`) and load by name.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from longvideo.errors import UserError
from longvideo.models.vae.model import CausalVAE, VAEConfig

ASSETS = Path(__file__).resolve().parents[2] / "assets"
BUNDLED = ("shapes",)  # pipeline folders shipped inside the package


def save_vae(vae: CausalVAE, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors` (optionally cast, e.g. to bf16)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in vae.state_dict().items()
    }
    tmp = folder / ".model.safetensors.tmp"
    save_file(sd, tmp, metadata={"format": "pt", "component": "vae"})
    tmp.replace(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(vae.cfg), indent=1) + "\n")
    return folder


def resolve_vae_folder(name_or_path: str | Path) -> Path:
    """A bundled model name (its `vae/` folder), a pipeline folder (its `vae/`), or a VAE folder."""
    p = Path(name_or_path)
    if str(name_or_path) in BUNDLED and not p.exists():
        p = ASSETS / str(name_or_path)
    if (p / "vae" / "config.json").is_file():
        return p / "vae"
    if (p / "config.json").is_file():
        return p
    raise UserError(
        f"no VAE at {name_or_path!r}: expected a bundled name ({', '.join(BUNDLED)}), "
        "a pipeline folder with vae/, or a folder with config.json + model.safetensors"
    )


def load_vae(name_or_path: str | Path, dtype: torch.dtype = torch.float32) -> CausalVAE:
    folder = resolve_vae_folder(name_or_path)
    try:
        cfg = VAEConfig(**json.loads((folder / "config.json").read_text()))
    except (TypeError, json.JSONDecodeError) as e:
        raise UserError(f"{folder / 'config.json'}: not a longvideo VAE config ({e})") from None
    try:
        sd = load_file(folder / "model.safetensors")
    except (FileNotFoundError, SafetensorError, OSError) as e:
        raise UserError(f"{folder / 'model.safetensors'}: cannot read weights ({e})") from None
    with torch.device("meta"):
        vae = CausalVAE(cfg)
    missing, unexpected = set(vae.state_dict()) - set(sd), set(sd) - set(vae.state_dict())
    if missing or unexpected:
        raise UserError(
            f"{folder}: weights do not match config (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    vae.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}, assign=True)
    return vae.eval()
