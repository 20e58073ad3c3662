"""VAE reconstruction quality on shapes-world videos the VAE never saw (fresh seeds, held-out pairs too)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from longvideo.data.shapes import ShapesConfig, sample_video, video_rng
from longvideo.data.video_io import to_uint8_frames
from longvideo.eval.metrics import psnr, ssim
from longvideo.eval.shapes import BY_EXPECTED, evaluate, summarise
from longvideo.models.vae.model import CausalVAE, split_frames


@torch.no_grad()
def shapes_recon(
    vae: CausalVAE,
    num: int = 16,
    frames: int = 33,
    seed: int = 10_000,
    latent_chunk: int = 0,
    progress: bool = False,
    judge: bool = False,
) -> dict:
    """Mean PSNR / SSIM of encode (posterior mean) -> decode over `num` videos of `frames` frames.

    `latent_chunk` > 0 streams both directions in chunks of that many latent frames (same result, less
    memory). The default seed range is disjoint from training's (seed 0, indices from 0). `judge` also runs
    the shapes evaluator on the reconstructions against their captions (key "judged": rates per object
    attribute): what a generator on this VAE's latents can score at best.
    """
    cfg = ShapesConfig(include_held_out=True)
    p, s, judged = [], [], []
    for i in tqdm(range(num), desc="recon", unit="video", disable=not progress):
        video = sample_video(cfg, video_rng(seed, i))
        x = video.render_tensor(frames)[None]  # (1, 3, T, 64, 64)
        if latent_chunk > 0:
            z = torch.cat([q.mean for q in vae.encode_stream(split_frames(x, latent_chunk))], dim=2)
            y = torch.cat(list(vae.decode_stream(z, chunk=latent_chunk)), dim=2)
        else:
            y = vae.decode(vae.encode(x).mean)
        y = y.clamp(-1, 1)
        p.append(psnr(y, x).item())
        s.append(ssim(y, x).item())
        if judge:
            judged.append(evaluate(to_uint8_frames(y[0]), video.caption))
    out = {
        "psnr": round(float(np.mean(p)), 3),
        "ssim": round(float(np.mean(s)), 4),
        "videos": num,
        "frames": frames,
        "psnr_min": round(float(np.min(p)), 3),
    }
    if judge:
        s = summarise(judged)
        out["judged"] = s["all"] | {k: s[k] for k in BY_EXPECTED}
    return out
