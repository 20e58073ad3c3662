"""How much does one word of the caption move a pipeline's DiT? A probe of the text pathway.

    python benchmarks/probes/dit_text_probe.py --model shapes
    python benchmarks/probes/dit_text_probe.py --model runs/shapes_dit_stage3/export \\
        --ckpt runs/shapes_dit_stage4/ckpt

For a base caption and variants that change one attribute (background, colour, shape, motion), the DiT's
velocity on the same x_t (pure noise scaled to t) is compared: |v(variant) - v(base)| / |v(base)|, and
against the empty caption (what classifier-free guidance amplifies). At t = 1 only the caption can say what
the video is: a model that reads its words moves a lot for a background change (the background fills most of
the frame). --ckpt loads the EMA weights of a trainer checkpoint folder's latest checkpoint.
"""

from __future__ import annotations

import argparse
import json

import torch

from longvideo.pipelines.video import VideoPipeline

BASE = "a large red circle moving right quickly on a black background"
VARIANTS = {
    "background": BASE.replace("black background", "white background"),
    "color": BASE.replace("red", "blue"),
    "shape": BASE.replace("circle", "square"),
    "motion": BASE.replace("moving right quickly", "staying still"),
    "empty": "",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--ckpt", default=None, help="a trainer's checkpoint folder (its latest EMA weights)")
    p.add_argument("--times", type=float, nargs="+", default=[1.0, 0.9, 0.5])
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe = VideoPipeline.from_pretrained(a.model)
    step = None
    if a.ckpt:
        from longvideo.train.checkpoint import latest_checkpoint, load_checkpoint

        tensors, _, meta = load_checkpoint(latest_checkpoint(a.ckpt))
        pipe.transformer.load_state_dict(pipe.transformer.state_dict() | tensors["ema"])
        step = meta["step"]
    dit, vae = pipe.transformer, pipe.vae.cfg
    caps = [BASE, *VARIANTS.values()]
    text, mask = pipe.text_encoder.encode(caps)
    k = (a.frames - 1) // vae.temporal_factor + 1
    h, w = pipe.defaults.height // vae.spatial_factor, pipe.defaults.width // vae.spatial_factor
    shape = (1, dit.cfg.in_channels, k, h, w)
    eps = torch.randn(shape, generator=torch.Generator().manual_seed(0)).expand(len(caps), *shape[1:])
    cond = torch.zeros(len(caps), dit.cfg.cond_channels, *shape[2:]) if dit.cfg.cond_channels else None
    table = {}
    for t in a.times:
        tt = torch.full((len(caps),), t, dtype=torch.float64)
        with torch.no_grad():
            v = dit(eps * t, pipe.schedule.model_time(tt).float(), text, mask, cond)[:, : shape[1]]
        ref = v[0].norm()
        table[t] = {n: round(((v[i + 1] - v[0]).norm() / ref).item(), 4) for i, n in enumerate(VARIANTS)}
    print("| t | " + " | ".join(VARIANTS) + " |\n|---|" + "---|" * len(VARIANTS))
    for t, row in table.items():
        print(f"| {t} | " + " | ".join(f"{row[n]:.3f}" for n in VARIANTS) + " |")
    print(json.dumps({"model": a.model, "ckpt": a.ckpt, "step": step, "table": table}))


if __name__ == "__main__":
    main()
