"""Render a shapes-world dataset to files: `DIR/*.mp4` + `DIR/manifest.jsonl`.

Video `i` depends only on (seed, i) (`video_rng`), so a dataset can be written in any order, in parallel,
and resumed: every video is written atomically (temp file + rename), existing ones are kept on a rerun,
and the manifest is replaced atomically once all videos exist. `DIR/shapes.json` records what the folder
holds, so a rerun with other settings is refused instead of mixing two datasets.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from longvideo.data.shapes import HELD_OUT, ShapesConfig, ShapesVideo, sample_video, video_rng
from longvideo.errors import UserError


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
    if n <= 0:
        raise UserError(f"number of videos must be > 0, got {n}")
    if workers <= 0:
        raise UserError(f"workers must be > 0, got {workers}")
    cfg.validate()
    out = Path(out)
    _prepare_dir(out, {"config": asdict(cfg), "seed": seed, "quality": quality})
    names = [f"{i:06d}.mp4" for i in range(n)]
    todo = [i for i in range(n) if not (out / names[i]).exists()]
    jobs = [(str(out / names[i]), cfg, seed, i, quality) for i in todo]
    bar = tqdm(total=n, initial=n - len(todo), desc="shapes", unit="video", disable=not progress)
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            _write_one(job)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=8):
                bar.update()
    bar.close()
    rows = [
        manifest_row(sample_video(cfg, video_rng(seed, i)), names[i], cfg.num_frames, seed, i)
        for i in range(n)
    ]
    _atomic_write_text(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return {"videos": n, "written": len(todo), "kept": n - len(todo), "manifest": str(out / "manifest.jsonl")}


def _write_one(job) -> None:
    from longvideo.data.video_io import VideoWriter

    path, cfg, seed, index, quality = job
    video = sample_video(cfg, video_rng(seed, index))
    with VideoWriter(path, video.fps, quality=quality) as w:
        for frame in video.iter_frames(cfg.num_frames):
            w.write(frame)


def _prepare_dir(out: Path, meta: dict) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"output folder {out} is not writable")
    stamp = out / "shapes.json"
    if stamp.exists():
        try:
            old = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            old = None
        if old != json.loads(json.dumps(meta)):
            raise UserError(f"{out} holds a shapes dataset made with other settings; use another folder")
    elif any(out.glob("*.mp4")):
        raise UserError(f"{out} already holds videos that are not a shapes dataset; use another folder")
    else:
        _atomic_write_text(stamp, json.dumps(meta, indent=1) + "\n")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
