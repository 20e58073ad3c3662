"""From detected cuts to clip spans: shots, event stitching, chopping to the length rules.

All positions are source frame indices; a span is [start, end). The detector itself runs inside the single
decode pass (analyse.py); this module builds it and does the arithmetic after.

Chopping (the seeds keep 3-10 s): a shot longer than `max_seconds` becomes ceil(L / max) near-equal pieces,
each chop point moved to a keyframe when one is close, so the piece can be stream-copied. Pieces of a shot
longer than max are always >= max / 2 >= min, since max >= 2 min.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from longvideo.curate.config import SplitConfig


@dataclass(frozen=True)
class Span:
    start: int  # first frame
    end: int  # one past the last frame
    shot: int  # index of the (stitched) shot it comes from

    @property
    def frames(self) -> int:
        return self.end - self.start


def make_detector(cfg: SplitConfig):
    """A fresh PySceneDetect detector (they hold state: one per input)."""
    from scenedetect.detectors import AdaptiveDetector, ContentDetector

    if cfg.detector == "adaptive":
        return AdaptiveDetector(
            adaptive_threshold=cfg.adaptive_threshold,
            min_scene_len=cfg.min_scene_len,
            window_width=cfg.window_width,
            min_content_val=cfg.min_content_val,
        )
    return ContentDetector(threshold=cfg.threshold, min_scene_len=cfg.min_scene_len)


def shots(cuts: Sequence[int], num_frames: int) -> list[tuple[int, int]]:
    """Cut frames -> shot spans covering [0, num_frames)."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < num_frames), num_frames]
    return list(itertools.pairwise(bounds))


def stitch(
    spans: list[tuple[int, int]], similarity: dict[int, float], threshold: float
) -> list[tuple[int, int]]:
    """Merge adjacent shots whose boundary frames are alike (cosine >= threshold): a cut the detector found
    in one continuous event (a flash, a fast pan, a jump cut). Cuts without a measured similarity stay."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and similarity.get(s, -math.inf) >= threshold:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def chop(
    shot_spans: Sequence[tuple[int, int]], fps: float, cfg: SplitConfig, keyframes: Sequence[int] = ()
) -> list[Span]:
    """Shots -> clip spans of at most max_seconds (too-short ones are kept; `is_too_short` marks them)."""
    max_f = max(1, math.floor(cfg.max_seconds * fps + 1e-6))
    keys = sorted(keyframes)
    out: list[Span] = []
    for k, (s0, e0) in enumerate(shot_spans):
        s, e = s0 + cfg.trim_frames, e0 - cfg.trim_frames
        if e - s < 1:  # trimmed away: keep the untrimmed shot, it is too short anyway
            s, e = s0, e0
        n = math.ceil((e - s) / max_f)
        start = s
        for j in range(n - 1, 0, -1):  # j pieces remain after this one
            ideal = start + round((e - start) / (j + 1))
            cut = _snap(
                ideal, start, e, j, max_f, (e - s) / n * cfg.snap_keyframes, cfg.min_seconds * fps, keys
            )
            out.append(Span(start, cut, k))
            start = cut
        out.append(Span(start, e, k))
    return out


def _snap(
    ideal: int,
    start: int,
    end: int,
    remaining: int,
    max_f: int,
    window: float,
    min_f: float,
    keys: Sequence[int],
) -> int:
    """The keyframe nearest `ideal` within `window` that keeps this piece and the `remaining` pieces after
    it within [min, max] frames; `ideal` when there is none."""
    lo = bisect.bisect_left(keys, ideal - window)
    hi = bisect.bisect_right(keys, ideal + window)
    best = ideal
    for kf in sorted(keys[lo:hi], key=lambda x: abs(x - ideal)):
        this, rest = kf - start, end - kf
        if min_f <= this <= max_f and remaining * min_f <= rest <= remaining * max_f:
            best = kf
            break
    return best


def is_too_short(span: Span, fps: float, cfg: SplitConfig) -> bool:
    # why: half a frame of slack, so rounding a chop point never drops a piece that is min_seconds long
    return span.frames + 0.5 < cfg.min_seconds * fps
