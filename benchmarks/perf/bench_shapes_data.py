"""Benchmark `longvideo data shapes`: render + encode N videos to a folder, then judge them from the files.

    python benchmarks/perf/bench_shapes_data.py -n 200 --frames 33 [--workers 1] [--extra=--objects=1 ...]

Prints JSON: seconds for the data command (as a user runs it, in a fresh process), videos/s, and the
evaluator's verdict on the written files (an independent check: pixels + captions only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra", action="append", default=[], help="a `data shapes` argument (repeatable)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        cmd = [
            sys.executable,
            "-m",
            "longvideo",
            "data",
            "shapes",
            "-n",
            str(a.n),
            "--frames",
            str(a.frames),
            "--seed",
            str(a.seed),
            "--workers",
            str(a.workers),
            "-o",
            str(out),
            *a.extra,
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ev = subprocess.run(
            [sys.executable, "-m", "longvideo", "eval", "shapes", "--manifest", str(out / "manifest.jsonl")],
            check=True,
            capture_output=True,
            text=True,
        )
        eval_s = time.perf_counter() - t0
        summary = json.loads(ev.stdout)
        size_kib = sum(p.stat().st_size for p in out.glob("*.mp4")) / 1024
    print(
        json.dumps(
            {
                "videos": a.n,
                "frames": a.frames,
                "workers": a.workers,
                "data_shapes_s": round(gen_s, 2),
                "videos_per_s": round(a.n / gen_s, 1),
                "total_kib": round(size_kib),
                "eval_s": round(eval_s, 2),
                "eval_correct": summary["correct"],
                "eval": summary["all"],
            }
        )
    )


if __name__ == "__main__":
    main()
