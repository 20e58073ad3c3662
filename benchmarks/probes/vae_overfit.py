"""How fast can a VAE recipe fit one fixed batch? A cheap probe of the optimizer and architecture settings.

    python benchmarks/probes/vae_overfit.py --config configs/shapes/vae_v2.yaml
    python benchmarks/probes/vae_overfit.py --config configs/shapes/vae_v2.yaml lr=1e-3 "betas=[0.5,0.9]"

Builds the VAE of a training config (with `key=value` overrides), takes that run's first image batch
(`image_batch_size` shapes-world frames) and trains on it alone for --steps steps (linear warmup over the
first 10%, no schedule, no EMA), decoding the posterior mean. Prints the batch PSNR every --every steps and
the last value as JSON. A recipe that cannot fit 8 images quickly will not fit the world.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import torch

from longvideo.config import load_config
from longvideo.models.vae.model import CausalVAE
from longvideo.train.vae import VAETrainConfig, shapes_batch
from longvideo.train.vae_losses import vae_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/shapes/vae_v2.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the training config")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(VAETrainConfig, a.config, a.overrides)
    torch.manual_seed(cfg.seed)
    vae = CausalVAE(cfg.model)
    x = shapes_batch(dataclasses.replace(cfg, image_every=1), 0)  # (B, 3, 1, H, W)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    warmup, trajectory, t0 = max(1, a.steps // 10), [], time.perf_counter()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / warmup)
        rec, post = vae(x, sample=False)
        loss, _ = vae_loss(x, rec, post.kl(), cfg.kl_weight, None, 0.0, cfg.mse_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        if (step + 1) % a.every == 0:
            mse = (rec.detach().clamp(-1, 1) - x).pow(2).mean().item()
            trajectory.append(round(10 * math.log10(4 / mse), 2))  # PSNR of [-1, 1] images
            print(f"step {step + 1}: {trajectory[-1]} dB", flush=True)
    settings = {"config": a.config, "overrides": a.overrides, "steps": a.steps, "images": x.shape[0]}
    print(json.dumps(settings | {"psnr": trajectory[-1], "trajectory": trajectory,
                                 "seconds": round(time.perf_counter() - t0, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
