"""Save and load a VAE component folder: `config.json` + `model.safetensors` (DESIGN.md §3), the one way
every component folder loads (models/weights.py). A bundled model name or a pipeline folder resolves to
its `vae/` folder in pipelines/folder.py (`load_vae` there takes all three).
"""

from __future__ import annotations

from pathlib import Path

import torch

from longvideo.models.vae.model import CausalVAE, VAEConfig
from longvideo.models.weights import load_component, save_component


def save_vae(vae: CausalVAE, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors` (optionally cast, e.g. to bf16)."""
    return save_component(vae, folder, "vae", dtype)


def load_vae(folder: str | Path, dtype: torch.dtype = torch.float32) -> CausalVAE:
    """The VAE of a VAE folder, in eval mode (its parameters still require grad: a trainer may go on)."""
    return load_component(folder, VAEConfig, CausalVAE, dtype, "VAE")


__all__ = ["load_vae", "save_vae"]
