"""Put a fine-tuned VAE into a pipeline folder whose DiT was trained on the same encoder.

    python scripts/swap_vae.py PIPELINE_DIR VAE_DIR OUT_DIR

A decoder-only stage (train/vae.py, stage: decoder) leaves the encoder bit-identical, so a DiT trained on
the old VAE's latents is equally at home with the new decoder. This refuses unless every encoder weight is
equal, and keeps the pipeline VAE's latent statistics (latents_mean / latents_std).
"""

from __future__ import annotations

import sys

import torch

from longvideo.models.vae.model import CausalVAE
from longvideo.pipelines.folder import load_vae
from longvideo.pipelines.video import VideoPipeline


def main(pipeline: str, vae_dir: str, out: str) -> None:
    pipe = VideoPipeline.from_pretrained(pipeline)
    new = load_vae(vae_dir)
    old_sd, new_sd = pipe.vae.state_dict(), new.state_dict()
    frozen = [k for k in old_sd if k.split(".")[0] in CausalVAE.LATENT_PATH]
    bad = [k for k in frozen if not torch.equal(old_sd[k], new_sd[k])]
    if not frozen or bad:
        sys.exit(f"encoders differ ({len(bad)} of {len(frozen)} weights, e.g. {bad[:2]}): retrain the DiT")
    new.cfg.latents_mean, new.cfg.latents_std = pipe.vae.cfg.latents_mean, pipe.vae.cfg.latents_std
    pipe.vae.load_state_dict(new_sd)
    pipe.vae.cfg = new.cfg
    pipe.save_pretrained(out)
    print(f"{out}: {len(frozen)} encoder weights equal; decoder from {vae_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
