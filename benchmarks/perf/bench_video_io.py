"""Benchmark longvideo.data.video_io: write then read a synthetic H.264 video, print JSON.

    python benchmarks/perf/bench_video_io.py --frames 300 --size 256

Frames are generated on the fly (included in write time, ~1% of it) so peak RSS shows that neither side
holds the video in memory: it should not grow with --frames.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from longvideo.data.video_io import VideoWriter, iter_frames, probe


def synthetic_frame(k: int, size: int) -> np.ndarray:
    """A moving colour gradient (size, size, 3): cheap to make, realistic enough for the encoder."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    r = (ramp[None, :] + 4 * k) % 256  # (1, W) scrolls right
    g = (ramp[:, None] + 2 * k) % 256  # (H, 1) scrolls down
    b = np.full((size, size), (3 * k) % 256, np.float32)
    return np.stack(np.broadcast_arrays(r, g, b), axis=-1).astype(np.uint8)


def _peak_rss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=256, help="square frame side, even")
    ap.add_argument("--fps", type=float, default=24.0)
    ap.add_argument("--quality", type=int, default=18)
    args = ap.parse_args(argv)

    if args.frames < 1 or args.size < 2 or args.size % 2:
        ap.error("--frames must be >= 1 and --size even and >= 2")
    base_kib = _peak_rss_kib()  # after imports (torch dominates)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mp4"
        t0 = time.perf_counter()
        with VideoWriter(path, args.fps, quality=args.quality) as w:
            for k in range(args.frames):
                w.write(synthetic_frame(k, args.size))
        write_s = time.perf_counter() - t0
        size_bytes = path.stat().st_size

        t0 = time.perf_counter()
        n_read = sum(1 for _ in iter_frames(path))
        read_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        n_small = sum(1 for _ in iter_frames(path, fps=args.fps / 2, size=(args.size // 2, args.size // 2)))
        read_small_s = time.perf_counter() - t0
        assert n_read == probe(path).num_frames == args.frames

    print(
        json.dumps(
            {
                "frames": args.frames,
                "size": args.size,
                "file_kib": round(size_bytes / 1024, 1),
                "write_fps": round(args.frames / write_s, 1),
                "read_fps": round(n_read / read_s, 1),
                "read_fps_half_rate_half_size": round(n_small / read_small_s, 1),
                "peak_rss_mib": round(_peak_rss_kib() / 1024, 1),
                "rss_after_imports_mib": round(base_kib / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
