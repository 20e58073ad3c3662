"""Render a shapes-world dataset to files: `DIR/*.mp4` + `DIR/manifest.jsonl`.

Video `i` depends only on (seed, i) (`video_rng`), so a dataset can be written in any order, in parallel,
and resumed: every video is written atomically (temp file + rename), existing ones are kept on a rerun,
and the manifest is replaced atomically once all videos exist. `DIR/shapes.json` records what the folder
holds, so a rerun with other settings is refused instead of mixing two datasets; a folder holding anything
else (another command's outputs) is refused. Every setting is checked before anything is written. A killed
run's temp files are swept by the next; worker processes die with the command.
"""

from __future__ import annotations

import json
import numbers
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from longvideo.data.shapes import HELD_OUT, ShapesConfig, ShapesVideo, sample_video, video_rng
from longvideo.errors import UserError
from longvideo.outputs import (
    check_folder_for,
    stop_pool,
    sweep_temps,
    worker_init,
    worker_task,
    write_text_atomic,
)

STAMP = "shapes.json"


def manifest_row(video: ShapesVideo, path: str, num_frames: int, seed: int, index: int) -> dict:
    return {
        "path": path,
        "caption": video.caption,
        "num_frames": num_frames,
        "fps": video.fps,
        "height": video.height,
        "width": video.width,
        "background": video.background,
        "objects": [asdict(o) | {"held_out": (o.color, o.shape) in HELD_OUT} for o in video.objects],
        "seed": seed,
        "index": index,
    }


def write_shapes_dataset(
    out: str | Path,
    n: int,
    cfg: ShapesConfig,
    seed: int = 0,
    quality: int = 10,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write `n` videos of `cfg.num_frames` frames to `out`. Returns a small summary."""
    _check_int("number of videos", n, 1)
    _check_int("workers", workers, 1)
    _check_int("quality (H.264 CRF)", quality, 0, 51)
    _check_int("seed", seed, 0)
    cfg.validate()
    out = Path(out)
    check_folder_for(out, STAMP, "data shapes")
    names = [f"{i:06d}.mp4" for i in range(n)]
    # every video is drawn (cheap) before anything is written: filters no video satisfies leave nothing
    rows = [
        manifest_row(sample_video(cfg, video_rng(seed, i)), names[i], cfg.num_frames, seed, i)
        for i in range(n)
    ]
    _prepare_dir(out, {"config": asdict(cfg), "seed": seed, "quality": quality})
    sweep_temps(out)  # what a killed run left
    todo = [i for i in range(n) if not (out / names[i]).exists()]
    jobs = [(str(out / names[i]), cfg, seed, i, quality) for i in todo]
    with tqdm(total=n, initial=n - len(todo), desc="shapes", unit="video", disable=not progress) as bar:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                _write_one(job)
                bar.update()
        else:
            with _pool(workers) as pool:
                try:
                    for _ in pool.map(_write_one, jobs, chunksize=8):
                        bar.update()
                except BaseException:  # why: Ctrl-C, SIGTERM, an error: stop the workers, drop the queue
                    stop_pool(pool)
                    raise
    write_text_atomic(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return {"videos": n, "written": len(todo), "kept": n - len(todo), "manifest": str(out / "manifest.jsonl")}


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else f"> {low - 1}" if low > 0 else f">= {low}"
        raise UserError(f"{name} must be {span}, got {value}")


def _pool(workers: int) -> ProcessPoolExecutor:
    # why fork on Linux: a worker starts at once (spawn would import torch again in each)
    ctx = get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=worker_init, initargs=(os.getpid(),))


def _write_one(job) -> None:
    from longvideo.data.video_io import VideoWriter

    path, cfg, seed, index, quality = job
    video = sample_video(cfg, video_rng(seed, index))
    with worker_task(), VideoWriter(path, video.fps, quality=quality) as w:
        for frame in video.iter_frames(cfg.num_frames):
            w.write(frame)


def _prepare_dir(out: Path, meta: dict) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"output folder {out} is not writable")
    stamp = out / STAMP
    if stamp.exists():
        try:
            old = json.loads(stamp.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(meta)):
            raise UserError(f"{out} holds a shapes dataset made with other settings; use another folder")
    else:
        write_text_atomic(stamp, json.dumps(meta, indent=1) + "\n")
