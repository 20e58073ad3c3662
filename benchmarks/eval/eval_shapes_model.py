"""Generate shapes-world videos from captions and judge them with the shapes evaluator (issue #5's table).

    python benchmarks/eval/eval_shapes_model.py --model shapes --num 60 --json

Two splits of single-object captions drawn from the world with seed --seed (not the training seed):
`held_out` (every caption uses a held-out (color, shape) pair, never seen in training) and `seen`. Each
caption is generated once (video seed = its index) and judged from pixels only (eval/shapes.py): the right
shape, motion, size, object present in >= 90% of frames, background. Prints a table and, with --json, the
summary dict last.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from longvideo.data.shapes import ShapesConfig, sample_video, video_rng
from longvideo.data.video_io import to_uint8_frames
from longvideo.eval.shapes import BY_EXPECTED, evaluate, summarise
from longvideo.pipelines.video import VideoPipeline


def captions(n: int, seed: int, held_out: bool, objects: int) -> list[str]:
    cfg = ShapesConfig(num_objects=[objects], include_held_out=held_out, held_out_only=held_out)
    return [sample_video(cfg, video_rng(seed, i)).caption for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes")
    p.add_argument("--num", type=int, default=60, help="captions per split")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--objects", type=int, default=1, choices=[1, 2])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--sampler", default=None)
    p.add_argument("--shift", type=float, default=None, help="flow shift of the sampling times (SD3)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--results", default=None, help="write every judged video here (JSONL)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = VideoPipeline.from_pretrained(a.model)
    if a.shift is not None:  # sampling only: the model's inputs do not depend on it
        pipe.schedule.flow_shift = a.shift
    summary, rows, t0 = {}, [], time.perf_counter()
    for split, held in (("held_out", True), ("seen", False)):
        results = []
        for i, caption in enumerate(captions(a.num, a.seed, held, a.objects)):
            video = pipe(
                caption, seed=i, steps=a.steps, guidance=a.guidance, sampler=a.sampler, progress=False
            )
            r = evaluate(to_uint8_frames(video[0]), caption)
            results.append(r)
            rows.append({"split": split, "seed": i} | r)
        s = summarise(results)
        summary[split] = {"videos": s["videos"], "correct": s.get("correct")} | s["all"]
        summary[split] |= {k: s[k] for k in BY_EXPECTED}
    summary["seconds_per_video"] = round((time.perf_counter() - t0) / (2 * a.num), 2)
    settings = ("model", "num", "seed", "steps", "guidance", "sampler", "shift")
    summary["settings"] = {k: getattr(a, k) for k in settings}
    if a.results:
        with open(a.results, "w") as f:
            f.writelines(json.dumps(r, default=str) + "\n" for r in rows)
    keys = ["objects", "found", "shape", "size", "motion", "present"]
    print(f"{'split':10s} " + " ".join(f"{k:>8s}" for k in [*keys, "correct"]))
    for split in ("held_out", "seen"):
        s = summary[split]
        print(f"{split:10s} " + " ".join(f"{s.get(k, 0):>8}" for k in [*keys, "correct"]))
    for split in ("held_out", "seen"):
        by = {g: v for k in BY_EXPECTED for g, v in summary[split][k].items()}
        print(f"{split:10s} right rate [count]: " + ", ".join(f"{k} {r} [{n}]" for k, (r, n) in by.items()))
    if a.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
