"""Peak memory and speed of long generation vs video length, measured from outside the process.

    python benchmarks/perf/bench_long_video.py --model shapes --frames 129 513 1025 [--window 33 --overlap 2]
    python benchmarks/perf/bench_long_video.py --model /tmp/tiny_pipe          # any pipeline folder

Each length runs `longvideo generate` in a fresh child process; its peak RSS comes from the kernel's
accounting of that child (os.wait4), not from the child's own report, and its wall time from this
process (so both include Python start-up and model loading). Prints one JSON row per length, with the
drift of the written video (eval/drift.py), and a summary: the peak-RSS ratio longest / shortest (constant
memory: close to 1) and seconds per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PROMPT = "a large red circle moving right quickly on a black background"


def run(model: str, frames: int, out: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "longvideo", "generate", a.prompt, "--model", model]
    cmd += ["--frames", str(frames), "--seed", str(a.seed), "-o", out]
    for flag in ("window", "overlap", "steps"):
        if getattr(a, flag) is not None:
            cmd += [f"--{flag}", str(getattr(a, flag))]
    if a.anchor:
        cmd.append("--anchor")
    if a.cond_noise:
        cmd += ["--cond-noise", str(a.cond_noise)]
    cmd += a.extra
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            err.seek(0)
            tail = err.read().strip().splitlines()[-1:] or ["(no message)"]
            raise SystemExit(f"generate failed for {frames} frames: {tail[0]}\n  {' '.join(cmd)}")
    row = json.loads(stdout.strip().splitlines()[-1])  # the command's summary
    row["peak_rss_mib_outside"] = round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
    row["wall_seconds_outside"] = round(wall, 2)
    row["seconds_per_frame"] = round(wall / frames, 4)
    row["seconds_per_frame_generating"] = round(row["seconds"] / frames, 4)  # without start-up and loading
    if a.drift:
        from longvideo.eval.drift import measure_drift

        d = measure_drift(out).summary()
        row["drift"] = {k: d[k] for k in ("background_drift_levels", "brightness_change", "sharpness_ratio")}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes", help="bundled model name or pipeline folder")
    ap.add_argument("--frames", type=int, nargs="+", default=[129, 513, 1025])
    ap.add_argument("--window", type=int, help="frames per window (default: the model's)")
    ap.add_argument("--overlap", type=int, help="latent frames carried between windows (default: 2)")
    ap.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    ap.add_argument("--anchor", action="store_true")
    ap.add_argument("--cond-noise", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--out", help="folder for the videos (default: a temporary one, removed)")
    ap.add_argument("--no-drift", dest="drift", action="store_false", help="skip the drift measurement")
    ap.add_argument("--extra", action="append", default=[], help="more `generate` arguments (repeatable)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.out or tmp
        os.makedirs(folder, exist_ok=True)
        rows = [run(a.model, n, os.path.join(folder, f"long_{n}.mp4"), a) for n in a.frames]
    for r in rows:
        print(json.dumps(r))
    rss = [r["peak_rss_mib_outside"] for r in rows]
    spf = [r["seconds_per_frame_generating"] for r in rows]
    print(
        json.dumps(
            {
                "model": a.model,
                "frames": a.frames,
                "peak_rss_ratio_longest_vs_shortest": round(rss[-1] / rss[0], 3),
                "seconds_per_frame_generating": spf,
            }
        )
    )


if __name__ == "__main__":
    main()
