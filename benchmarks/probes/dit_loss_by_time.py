"""Flow-matching loss of a pipeline's DiT by diffusion time, on latents of a cache: where does it learn?

    python benchmarks/probes/dit_loss_by_time.py --model shapes --cache runs/shapes_latents
    python benchmarks/probes/dit_loss_by_time.py ... --range 6144 12288   # only latents i in [6144, 12288)

Each of --num latents (spread over the cache) is noised at each t with a fixed generator and the velocity the
DiT predicts is compared with its target (text-to-video: empty conditioning). Two references per t: the same
with the captions rolled by one ("wrong caption": how much the text matters) and a baseline that predicts
eps minus the mean latent (what knowing nothing about the video scores). The loss is also split between the
salient tokens (train.salient.salient_weights: far from the clip's median latent -- the objects) and the rest.
"""

from __future__ import annotations

import argparse

import torch

from longvideo.diffusion import add_noise, target
from longvideo.pipelines.inputs import scale_latents
from longvideo.pipelines.video import VideoPipeline
from longvideo.train.latent_cache import LatentCache
from longvideo.train.salient import salient_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--cache", default="runs/shapes_latents")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--times", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9, 0.97])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--range", type=int, nargs=2, metavar=("LO", "HI"), help="latents lo <= i < hi only")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe = VideoPipeline.from_pretrained(a.model)
    lc = LatentCache(a.cache)
    lo, hi = a.range or (0, len(lc))
    if not 0 <= lo < hi <= len(lc):
        p.error(f"--range must lie in [0, {len(lc)}]")
    idx = [lo + i * (hi - lo) // a.num for i in range(a.num)]
    x0 = scale_latents(torch.stack([lc[i][0] for i in idx]), pipe.vae.cfg)  # (N, C, K, h, w)
    text, mask = pipe.text_encoder.encode([lc.rows[i]["caption"] for i in idx])
    cond = torch.zeros(len(idx), pipe.transformer.cfg.cond_channels, *x0.shape[2:])
    cond = cond if pipe.transformer.cfg.cond_channels else None
    g = torch.Generator().manual_seed(0)
    mean = x0.mean(dim=(0, 2, 3, 4), keepdim=True)
    sal = (salient_weights(x0, 1.0) > 1).expand_as(x0)  # (N, C, K, h, w)
    print(f"salient tokens: {sal.float().mean():.3f} of all")
    print("| t | loss | salient | rest | wrong caption | baseline |\n|---|---|---|---|---|---|")
    for t in a.times:
        eps = torch.randn(x0.shape, generator=g)
        tt = torch.full((len(idx),), t, dtype=torch.float64)
        xt = add_noise(x0, eps, tt, pipe.schedule)
        mt = pipe.schedule.model_time(tt).float()
        tgt = target(x0, eps, tt, pipe.schedule, pipe.diffusion.objective)
        with torch.no_grad():
            right = pipe.transformer(xt, mt, text, mask, cond)[:, : x0.shape[1]]
            wrong = pipe.transformer(xt, mt, text.roll(1, 0), mask.roll(1, 0), cond)[:, : x0.shape[1]]
        base = target(mean.expand_as(x0), eps, tt, pipe.schedule, pipe.diffusion.objective)
        err = (right - tgt) ** 2
        row = [err.mean().item(), err[sal].mean().item(), err[~sal].mean().item()]
        row += [((y - tgt) ** 2).mean().item() for y in (wrong, base)]
        print(f"| {t} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


if __name__ == "__main__":
    main()
