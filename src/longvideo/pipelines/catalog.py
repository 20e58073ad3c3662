"""What `longvideo models` lists: the DiT and VAE presets with their parameter counts (counted on the meta
device, so no memory is used even for the 2.7B ones) and the bundled pipelines."""

from __future__ import annotations

import torch

from longvideo.models.dit import PRESETS as DIT_PRESETS
from longvideo.models.dit import build_dit
from longvideo.models.vae.model import PRESETS as VAE_PRESETS
from longvideo.models.vae.model import CausalVAE, vae_preset
from longvideo.models.weights import count_params
from longvideo.pipelines import folder as fs


def list_models() -> list[dict]:
    """One dict per model: {name, component: "transformer" | "vae" | "pipeline", ...}.

    transformer: family, params, layers, dim, in_channels; vae: params, latent_channels, compression
    ("4x8x8" = time x height x width); pipeline (a bundled name for `--model`): installed."""
    rows: list[dict] = []
    for name, cfg in DIT_PRESETS.items():
        rows.append(
            {
                "name": name,
                "component": "transformer",
                "family": cfg.family,
                "params": count_params(build_dit(cfg, device="meta")),
                "layers": cfg.num_layers,
                "dim": cfg.dim,
                "in_channels": cfg.in_channels,
            }
        )
    for name in VAE_PRESETS:
        cfg = vae_preset(name)
        with torch.device("meta"):
            vae = CausalVAE(cfg)
        s, f = cfg.spatial_factor, cfg.temporal_factor
        rows.append(
            {
                "name": name,
                "component": "vae",
                "params": count_params(vae),
                "latent_channels": cfg.latent_channels,
                "compression": f"{f}x{s}x{s}",
            }
        )
    for name in fs.BUNDLED:
        rows.append(
            {
                "name": name,
                "component": "pipeline",
                "installed": (fs.ASSETS / name / "model_index.json").is_file(),
            }
        )
    return rows
