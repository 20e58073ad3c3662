"""Long single-window generation before and after ExVideo post-tuning, against chunked continuation
(issue #6's comparison), judged by the shapes evaluator.

    python benchmarks/eval/eval_long_window.py --tuned runs/shapes_extend/export --frames 129 --num 12

Modes, each on the same captions and seeds (single-object captions of the seen split):
- `base-window`: the base model, one window of all the frames (RoPE positions past its training window);
- `base-riflex`: the base model extended without training (RIFLEx + identity adapter; extend/);
- `tuned`: the post-tuned model, one window (skipped without --tuned);
- `chunked`: the base model window by window (its own window, continuation conditioning);
- `tuned-chunked`: the post-tuned model window by window (its longer window; for lengths beyond it).
Per mode: the evaluator's rates (found, shape, motion, present) and, per object, the mean fraction of frames
it is present in and how consistently it keeps one shape (`shape_consistency`). `--results FILE` writes one
JSON line per video with its object's presence in consecutive spans of `--timeline` frames (where a long
video loses its object: from the start, or at a window hand-over).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from eval_shapes_model import captions  # this folder: the same caption draw as issue #5's table
from longvideo.data.video_io import to_uint8_frames
from longvideo.eval.shapes import ShapesEvalConfig, evaluate, summarise
from longvideo.extend import ExtendConfig, extend_dit
from longvideo.pipelines.video import VideoPipeline


def judge(pipe: VideoPipeline, caps: list[str], frames: int, window: int | None, a, mode: str) -> dict:
    results, t0 = [], time.perf_counter()
    ecfg = ShapesEvalConfig(timeline=a.timeline)
    for i, caption in enumerate(caps):
        video = pipe(
            caption, frames=frames, seed=i, window=window, steps=a.steps, anchor=a.anchor,
            cond_noise=a.cond_noise, progress=False,
        )  # fmt: skip
        results.append(evaluate(to_uint8_frames(video[0]), caption, ecfg))
        if a.results:
            d = results[-1]["objects"][0]["detected"]
            row = {"mode": mode, "seed": i, "caption": caption, "present_frac": d["present_frac"]}
            with open(a.results, "a") as fh:
                fh.write(json.dumps(row | {"present_timeline": d.get("present_timeline")}) + "\n")
    s = summarise(results)
    dets = [o["detected"] for r in results for o in r["objects"]]
    return s["all"] | {
        "correct": s.get("correct"),
        "background": s.get("background"),
        "present_frac": round(float(np.mean([d.get("present_frac", 0.0) for d in dets])), 4),
        "shape_consistency": round(float(np.mean([d.get("shape_consistency", 0.0) for d in dets])), 4),
        "seconds_per_video": round((time.perf_counter() - t0) / len(caps), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="shapes")
    p.add_argument("--tuned", default=None, help="the post-tuned pipeline folder")
    p.add_argument("--frames", type=int, default=129)
    p.add_argument("--num", type=int, default=12)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--modes", nargs="+", default=["base-window", "base-riflex", "tuned", "chunked"])
    p.add_argument("--anchor", action="store_true", help="chunked modes: keep the first latent frame known")
    p.add_argument("--cond-noise", type=float, default=0.0, help="chunked modes: noise the known frames")
    p.add_argument("--results", default=None, help="append one JSON line per video here")
    p.add_argument("--timeline", type=int, default=128, help="--results: presence per span of N frames")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    caps = captions(a.num, a.seed, held_out=False, objects=1)
    base = VideoPipeline.from_pretrained(a.base)
    f = base.vae.cfg.temporal_factor
    base_frames = (base.defaults.frames - 1) // f + 1  # latent frames of the training window
    new_frames = (a.frames - 1) // f + 1
    table = {}
    for mode in a.modes:
        if mode == "base-window":
            table[mode] = judge(base, caps, a.frames, a.frames, a, mode)
        elif mode == "base-riflex":
            riflex = copy.copy(base)
            riflex.transformer = extend_dit(base.transformer, ExtendConfig(new_frames, base_frames)).eval()
            table[mode] = judge(riflex, caps, a.frames, a.frames, a, mode)
        elif mode in ("tuned", "tuned-chunked") and a.tuned:
            tuned = VideoPipeline.from_pretrained(a.tuned)
            window = a.frames if mode == "tuned" else (tuned.defaults.window or tuned.defaults.frames)
            table[mode] = judge(tuned, caps, a.frames, window, a, mode)
        elif mode == "chunked":
            table[mode] = judge(base, caps, a.frames, base.defaults.frames, a, mode)
    keys = ["found", "shape", "motion", "present", "present_frac", "shape_consistency", "seconds_per_video"]
    print(f"{'mode':12s} " + " ".join(f"{k[:12]:>12s}" for k in keys))
    for mode, row in table.items():
        print(f"{mode:12s} " + " ".join(f"{row.get(k, 0)!s:>12s}" for k in keys))
    run = {"frames": a.frames, "num": a.num, "base": a.base, "tuned": a.tuned, "anchor": a.anchor}
    print(json.dumps(run | {"cond_noise": a.cond_noise, "modes": table}))


if __name__ == "__main__":
    main()
