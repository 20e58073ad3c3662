"""Training items from a manifest: video/image clips cut and resized to shape buckets, with captions.

A manifest is `manifest.jsonl` (one JSON object a line; blank lines ignored) or a list of such dicts:

    path        video or image file, relative to the manifest's folder (or to `root` for a list) or absolute
    caption     the text
    start, end  optional, seconds: the part of the file the row stands for (default: all of it)
    num_frames, fps, height, width
                optional metadata of the *file's* video stream (as `probe` reports it, not of the
                start..end range); whatever is missing is probed, so complete rows cost no file access
    keep        optional; rows with `keep: false` are skipped (curation marks rejects this way)

Images (png, jpg, jpeg, webp, bmp) are one-frame items (T = 1), decoded by PyAV like videos.

Bucket rule (`assign_bucket`). Every row gets one bucket (T, H, W) at construction, from metadata only:
  1. aspect: keep the buckets whose H/W is nearest the file's h/w, measured as |log(H/W) - log(h/w)|
     (so 2:1 and 1:2 are equally far from 1:1);
  2. length: among those, the bucket with the most frames T that the row can fill, i.e. T <= its frames
     at the target fps, ceil((end - start) * fps) (images: 1); equal T: the bucket listed first.
  A row that fills no bucket of its nearest aspect is dropped (listed in `dropped`), as OSP drops short
  videos; it is not moved to another aspect. A video can land in a T = 1 bucket if that is the longest
  it fills.

An item is the bucket's T frames read at the target fps (`read_video(fps=...)`; None = native frames)
from the row's start, or from a random start in the row's range when `random_start`; the start is drawn
from a generator seeded by (seed, epoch, index), so item i of epoch e is the same clip on every run.
Frames are resized to cover (H, W) and centre-cropped (`resize="crop"`).

Unreadable files raise a `UserError` naming the file and its manifest row: at construction when the row
had to be probed, else when the item is read. `skip_broken=True` instead probes every file at
construction and drops the ones that cannot be opened (listed in `dropped`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from longvideo.data.video_io import from_uint8_frames, probe, read_video
from longvideo.errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "ManifestConfig", "ManifestDataset", "assign_bucket"]

_log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
Bucket = tuple[int, int, int]  # (T, H, W), T = 4k+1


@dataclass
class ManifestConfig:
    """How manifest rows become training items."""

    fps: float | None = None  # target frame rate; None = each file's native frames
    # (T, H, W) per bucket, T = 4k+1. Lists, not tuples: OmegaConf cannot type tuples inside a list.
    buckets: list[list[int]] = field(default_factory=lambda: [[1, 64, 64], [17, 64, 64], [33, 64, 64]])
    random_start: bool = True  # False: every clip starts at its row's start
    seed: int = 0  # seeds the random clip starts
    skip_broken: bool = False  # drop unreadable files at construction instead of raising

    def validate(self) -> None:
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and 0 < self.fps < math.inf):
            raise UserError(f"data fps must be a positive number or None, got {self.fps!r}")
        if not self.buckets:
            raise UserError("data buckets: give at least one (frames, height, width)")
        for b in self.buckets:
            ok = len(b) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in b)
            if not ok:
                raise UserError(f"data bucket must be (frames, height, width), positive integers, got {b!r}")
            if b[0] % 4 != 1:
                raise UserError(f"data bucket {tuple(b)}: frames must be 4k+1 (1, 5, 9, 17, ...), got {b[0]}")
        if self.seed < 0:
            raise UserError(f"data seed must be >= 0, got {self.seed}")


def assign_bucket(frames: int, height: int, width: int, buckets: Sequence[Sequence[int]]) -> Bucket | None:
    """The bucket for a row supplying `frames` frames of size height x width (see the module doc), or None."""
    aspect = math.log(height / width)
    dist = [abs(math.log(h / w) - aspect) for _, h, w in buckets]
    nearest = min(dist)
    best: Bucket | None = None
    for (t, h, w), d in zip(buckets, dist, strict=True):
        # why: the tolerance lets equal ratios written differently (32x64, 64x128) tie exactly.
        if d <= nearest + 1e-9 and t <= frames and (best is None or t > best[0]):
            best = (int(t), int(h), int(w))
    return best


@dataclass(frozen=True)
class _Row:
    """A kept row, resolved: where to read and which bucket it fills."""

    path: str  # absolute
    caption: str
    where: str  # "manifest.jsonl row 7", for messages
    image: bool
    start: float  # seconds
    rate: float  # frames per second the clip is read at (target or native)
    frames: int  # frames available from `start` at `rate`
    bucket: Bucket


def _read_jsonl(path: str | os.PathLike[str]) -> list[tuple[str, Any]]:
    """(label for messages, parsed row) per non-blank line; one-line UserError on bad JSON."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"manifest not found: {p}")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"{p} line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{p} line {n}: not valid JSON ({e.msg})") from None
    return rows


class ManifestDataset(Dataset):
    """Manifest rows as {"pixels": (3, T, H, W) in [-1, 1], "caption": str, "bucket": (T, H, W)}.

    `dataset[i]` is item i at epoch 0; `dataset[(i, epoch)]` draws that epoch's random start instead
    (a batch sampler can yield such pairs). `buckets` / `bucket_of(i)` need no decoding.
    """

    def __init__(
        self,
        manifest: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
        cfg: ManifestConfig | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.cfg = cfg or ManifestConfig()
        self.cfg.validate()
        self._buckets = [tuple(b) for b in self.cfg.buckets]
        if isinstance(manifest, (str, os.PathLike)):
            name = os.fspath(manifest)
            raw = _read_jsonl(manifest)
            base = Path(root) if root is not None else Path(manifest).parent
        else:
            name = "manifest"
            raw = [(f"manifest row {n}", row) for n, row in enumerate(manifest, 1)]
            base = Path(root) if root is not None else Path.cwd()
        self.rows: list[_Row] = []
        self.dropped: list[tuple[str, str]] = []  # (path, why) of rows left out, keep=false aside
        for where, row in raw:
            if not isinstance(row, Mapping):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if row.get("keep", True) is False:
                continue
            resolved = self._resolve(row, base, where)
            if resolved is not None:
                self.rows.append(resolved)
        if self.dropped:
            _log.warning(
                "%s: dropped %d of %d rows (e.g. %s: %s)", name, len(self.dropped), len(raw), *self.dropped[0]
            )

    # ------------------------------------------------------------------------------------ construction

    def _resolve(self, row: Mapping[str, Any], base: Path, where: str) -> _Row | None:
        """Row -> _Row with its bucket, or None (dropped: too short, or broken with skip_broken)."""
        rel = row.get("path")
        caption = row.get("caption")
        if not isinstance(rel, str) or not rel:
            raise UserError(f"{where}: missing 'path'")
        if not isinstance(caption, str):
            raise UserError(f"{where}: missing 'caption' (a string)")
        path = os.path.abspath(base / rel)
        image = Path(path).suffix.lower() in IMAGE_EXTENSIONS
        meta = {k: _number(row, k, where) for k in ("num_frames", "fps", "height", "width", "start", "end")}
        needed = ("height", "width") if image else ("num_frames", "fps", "height", "width")
        if self.cfg.skip_broken or any(meta[k] is None for k in needed):
            try:
                _fill_from_probe(meta, path, image)
            except UserError as e:  # names the file
                if not self.cfg.skip_broken:
                    raise UserError(f"{where}: {e}") from None
                self.dropped.append((path, str(e)))
                return None
        if image:
            start, rate, frames = 0.0, 1.0, 1
        else:
            start, rate, frames = self._range(meta, where)
        bucket = assign_bucket(frames, int(meta["height"]), int(meta["width"]), self._buckets)
        if bucket is None:
            self.dropped.append((path, f"{frames} frames fill no bucket of its aspect ratio"))
            return None
        return _Row(path, caption, where, image, start, rate, frames, bucket)

    def _range(self, meta: dict, where: str) -> tuple[float, float, int]:
        """(start seconds, read rate, frames available) of a video row."""
        duration = meta["num_frames"] / meta["fps"]
        start = meta["start"] or 0.0
        end = duration if meta["end"] is None else min(meta["end"], duration)
        if meta["end"] is not None and meta["end"] <= start:
            raise UserError(f"{where}: end ({meta['end']}) must be after start ({start})")
        rate = self.cfg.fps or meta["fps"]
        # frames k with start + k / rate < end; why the 11 ms: the reader counts a time that close to the
        # end of the video as past it, so never promise a frame it cannot give.
        frames = max(0, math.ceil((end - start - 0.011) * rate))
        return start, rate, frames

    # ----------------------------------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def buckets(self) -> list[Bucket]:
        """Every item's bucket (T, H, W), in item order; for the bucket sampler."""
        return [r.bucket for r in self.rows]

    def bucket_of(self, i: int) -> Bucket:
        return self.rows[i].bucket

    def clip_start(self, i: int, epoch: int = 0) -> float:
        """Seconds where item i's clip starts in `epoch` (its row start, or a seeded random start)."""
        row = self.rows[i]
        slack = row.frames - row.bucket[0]  # frames the clip can be shifted by
        if not self.cfg.random_start or slack <= 0:
            return row.start
        rng = np.random.default_rng([self.cfg.seed, epoch, i])
        return row.start + int(rng.integers(0, slack + 1)) / row.rate

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        row = self.rows[i]
        t, h, w = row.bucket
        start = self.clip_start(i, epoch)
        try:
            frames = read_video(  # (T', H, W, 3) uint8
                row.path,
                fps=None if row.image else self.cfg.fps,
                start=start,
                num_frames=t,
                size=(h, w),
                resize="crop",
            )
        except UserError as e:
            raise UserError(f"{row.where}: {e}") from None
        if len(frames) < t:
            raise UserError(
                f"{row.where}: {row.path} gave {len(frames)} of {t} frames from {start:.3f} s "
                "(shorter than its metadata says?)"
            )
        pixels: torch.Tensor = from_uint8_frames(frames)  # (3, T, H, W) in [-1, 1]
        return {"pixels": pixels, "caption": row.caption, "bucket": row.bucket}


def _fill_from_probe(meta: dict[str, float | None], path: str, image: bool) -> None:
    """Fill the file metadata the row lacks from the file's header; UserError naming the file if unusable."""
    info = probe(path)  # UserError naming the file when it is missing or unreadable
    if not image and (info.num_frames <= 0 or info.fps <= 0):
        raise UserError(f"video {path} has no frames or no frame rate")
    probed = {"num_frames": info.num_frames, "fps": info.fps, "height": info.height, "width": info.width}
    for k, v in probed.items():  # the manifest's own metadata wins; the probe fills gaps
        if meta[k] is None:
            meta[k] = v


def _number(row: Mapping[str, Any], key: str, where: str) -> float | None:
    """row[key] as a number (None when absent); integers for counts and sizes, positive except start."""
    v = row.get(key)
    if v is None:
        return None
    integral = key in ("num_frames", "height", "width")
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    seconds = key in ("start", "end")
    ok = ok and (v >= 0 if seconds else v > 0) and (not integral or v == int(v))
    if not ok:
        kind = "an integer > 0" if integral else "a number >= 0" if seconds else "a number > 0"
        raise UserError(f"{where}: '{key}' must be {kind}, got {v!r}")
    return int(v) if integral else float(v)
