"""How smooth is a VAE's latent space? What a DiT trained on it has to model.

    python benchmarks/probes/vae_latent_stats.py --model shapes runs/shapes_vae_v2/export --num 16

Encodes `--num` shapes-world videos of 33 frames (posterior mean), standardises every channel with the
latents' own mean and std, and reports:
- temporal roughness: var(z[t+1] - z[t]) / (2 var(z)) over latent frames (0: constant in time, 1: unrelated
  frames; the first latent frame, which encodes one video frame, is left out);
- spatial roughness: the same between horizontally neighbouring latent pixels;
- flat-frame texture: the spatial std (standardised units) of the latent of a flat black, grey and white
  33-frame clip, inner 6x6 pixels (a flat frame should encode to a flat latent).
"""

from __future__ import annotations

import argparse
import json

import torch

from longvideo.data.shapes import ShapesConfig, sample_video, video_rng
from longvideo.pipelines.folder import load_vae


@torch.no_grad()
def stats(model: str, num: int, seed: int) -> dict:
    vae = load_vae(model).eval()
    cfg = ShapesConfig(include_held_out=True)
    z = torch.cat(
        [vae.encode(sample_video(cfg, video_rng(seed, i)).render_tensor(33)[None]).mean for i in range(num)]
    )
    mean, std = z.mean((0, 2, 3, 4), keepdim=True), z.std((0, 2, 3, 4), keepdim=True)  # per channel
    zs = ((z - mean) / std)[:, :, 1:]  # (N, C, T-1, h, w)
    out = {
        "model": model,
        "temporal_roughness": round(float(zs.diff(dim=2).var() / 2), 4),
        "spatial_roughness": round(float(zs.diff(dim=4).var() / 2), 4),
    }
    for name, level in (("black", -1.0), ("grey", 0.0), ("white", 1.0)):
        flat = vae.encode(torch.full((1, 3, 33, 64, 64), level)).mean
        inner = ((flat - mean) / std)[:, :, :, 1:-1, 1:-1]
        out[f"flat_{name}_texture"] = round(float(inner.std((3, 4)).mean()), 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["shapes"], help="VAE folders or bundled names")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for m in a.model:
        print(json.dumps(stats(m, a.num, a.seed)))


if __name__ == "__main__":
    main()
