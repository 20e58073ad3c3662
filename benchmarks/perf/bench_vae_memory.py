"""Peak memory and speed of a VAE round trip vs video length, measured from outside the process.

    python benchmarks/perf/bench_vae_memory.py --model shapes --frames 65 257 1025 [--no-stream] [--chunk 4]

Each length runs `longvideo bench vae` in a fresh child process; its peak RSS comes from the kernel's
accounting of that child (os.wait4), not from the child's own report. Prints one JSON row per length and a
summary with the peak-RSS ratio longest/shortest and the frames/s spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def run(model: str, frames: int, stream: bool, chunk: int, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "longvideo",
        "bench",
        "vae",
        "--model",
        model,
        "--frames",
        str(frames),
        "--chunk",
        str(chunk if stream else 0),  # 0: the whole clip at once
        "--json",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"bench failed for {frames} frames: {cmd}")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss_mib_outside"] = round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--frames", type=int, nargs="+", default=[65, 257, 1025])
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--extra", action="append", default=[], help="more `bench vae` arguments (repeatable)")
    a = ap.parse_args()
    rows = [run(a.model, n, not a.no_stream, a.chunk, a.extra) for n in a.frames]
    for r in rows:
        print(json.dumps(r))
    fps = [r["frames_per_s"] for r in rows]
    rss = [r["peak_rss_mib_outside"] for r in rows]
    print(
        json.dumps(
            {
                "peak_rss_ratio_longest_vs_shortest": round(rss[-1] / rss[0], 3),
                "frames_per_s_min_over_max": round(min(fps) / max(fps), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
