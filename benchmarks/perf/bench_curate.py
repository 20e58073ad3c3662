"""Benchmark `longvideo curate` (probe + split + static + motion + text, clip files cut) on synthetic 720p
inputs of 10 s; print JSON with inputs/hour (the issue's "clips/hour": 10-s input clips) last.

    python benchmarks/perf/bench_curate.py -n 10 --workers 2

Inputs are 1280x720 H.264 at 24 fps made by longvideo.curate.synthetic: one or two scenes (a hard cut at
4-6 s), static / slow / normal / fast motion, some with a caption bar. They are cached in --dir (made once,
not timed). The timed part is one `curate` call with the default config into a fresh folder, worker start-up
included.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from longvideo.curate.config import CurateConfig
from longvideo.curate.manifest import MANIFEST, read_rows
from longvideo.curate.run import curate
from longvideo.curate.synthetic import Scene, write_video

SPEEDS = {"static": 0.0, "slow": 0.5, "normal": 3.0, "fast": 12.0}  # px per frame at 720p


def make_inputs(folder: Path, n: int, seed: int = 0) -> dict[str, int]:
    """`n` 10-s 720p inputs (cached by name) -> {path: number of scenes}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    for i in range(n):
        path = folder / f"in720_{seed}_{i:03d}.mp4"
        classes = rng.choice(list(SPEEDS), size=2, p=[0.15, 0.15, 0.45, 0.25])
        text = rng.random(2) < 0.3
        if rng.random() < 0.25:  # one 10-s shot
            lengths = [10.0]
        else:
            cut = float(rng.uniform(4.0, 6.0))
            lengths = [cut, 10.0 - cut]
        angles = rng.uniform(0, 360, size=2)
        scenes = [
            Scene(sec, seed=1000 * seed + 10 * i + k, speed=SPEEDS[classes[k]], angle=float(angles[k]),
                  text="BREAKING NEWS TONIGHT" if text[k] else None)
            for k, sec in enumerate(lengths)
        ]  # fmt: skip
        if not path.exists():
            write_video(path, scenes, fps=24.0, size=(720, 1280), quality=20)
        paths[str(path)] = len(scenes)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10, help="number of 10-s 720p inputs")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", default="probe,split,static,motion,text")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "longvideo_bench_curate"),
                    help="cache folder for the generated inputs")  # fmt: skip
    args = ap.parse_args(argv)
    if args.n < 1 or args.workers < 1:
        ap.error("-n and --workers must be >= 1")

    t0 = time.perf_counter()
    inputs = make_inputs(Path(args.dir), args.n)
    gen_s = time.perf_counter() - t0
    cfg = CurateConfig(steps=args.steps.split(","))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = curate(list(inputs), out, cfg, workers=args.workers, progress=False)
        seconds = time.perf_counter() - t0
        rows = read_rows(Path(out) / MANIFEST)
    print(
        json.dumps(
            {
                "inputs": args.n,
                "input": "10 s, 1280x720, 24 fps, H.264",
                "steps": cfg.steps,
                "workers": args.workers,
                "cpus": os.cpu_count(),
                "load_avg_1min_before": round(load_before, 2),
                "generate_s_untimed": round(gen_s, 1),
                "seconds": round(seconds, 2),
                "seconds_per_input": round(seconds / args.n, 2),
                "shots_found": len({(r["source"], r["shot"]) for r in rows}),
                "shots_true": sum(inputs.values()),
                "clips_out": len(rows),
                "kept": sum(bool(r["keep"]) for r in rows),
                "cut_copy": sum(r["cut"] == "copy" for r in rows),
                "cut_reencode": sum(r["cut"] == "reencode" for r in rows),
                "drop_reasons": summary["drop_reasons"],
                "errors": summary["errors"],
                "output_clips_per_hour": round(len(rows) / seconds * 3600),
                "inputs_per_hour": round(args.n / seconds * 3600),
            }
        )
    )


if __name__ == "__main__":
    main()
