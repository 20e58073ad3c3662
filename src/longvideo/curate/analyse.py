"""One decode pass per input, at analysis size, feeding every per-frame measurement at once.

Each frame (decoded by PyAV straight to a small size, short side `analysis_short_side`) goes to
- the shot detector (PySceneDetect, every frame: cuts are frame-exact);
- on a grid of frames `gap` apart (~8 fps, gap <= 3): the static measure (gray mean absolute difference)
  and the motion measure (DIS flow) of the pair (previous grid frame, this one);
- for event stitching, the embedder, on the two frames either side of each reported cut.

Only scalars per pair and per cut are kept, so memory does not grow with the frame size and an hour-long
input costs a few MB. Clip scores are aggregated later over the pairs inside each clip (filters.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from longvideo.curate.config import CurateConfig
from longvideo.curate.filters import FlowMeter, gray_diff
from longvideo.curate.probe import SourceInfo
from longvideo.curate.split import make_detector
from longvideo.data.video_io import iter_frames
from longvideo.errors import UserError

Embedder = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> float (N, D), rows of unit length


@dataclass
class Analysis:
    num_frames: int  # frames decoded
    size: tuple[int, int]  # analysis (H, W)
    gap: int  # source frames between the two frames of a pair
    cuts: list[int]  # first frame of every detected shot after the first
    pairs: np.ndarray  # (P, 2) int: source frame indices (a, b), b = a + gap
    diff: np.ndarray  # (P,) gray mean |a - b|, 0..255 at analysis size
    flow_mean: np.ndarray  # (P,) mean flow magnitude, px per source frame at a 256-px short side
    flow_top5: np.ndarray  # (P,) mean of the top 5% magnitudes, same unit
    cut_similarity: dict[int, float]  # cut frame -> cosine of the embeddings of frames cut-1 and cut


def analysis_size(src: SourceInfo, short_side: int) -> tuple[int, int] | None:
    """(H, W) with the short side at most `short_side`, aspect kept; None = the source size already fits."""
    h, w = src.info.height, src.info.width
    if min(h, w) <= short_side:
        return None
    s = short_side / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def pair_gap(fps: float, cfg: CurateConfig) -> int:
    return int(min(cfg.motion.max_gap, max(1, round(fps / cfg.motion.fps))))


def analyse(path: str, src: SourceInfo, cfg: CurateConfig, embedder: Embedder | None = None) -> Analysis:
    """Decode `path` once and measure everything the enabled steps need (see the module docstring)."""
    from scenedetect import FrameTimecode

    fps = src.info.fps
    size = analysis_size(src, cfg.analysis_short_side)
    detector = make_detector(cfg.split) if cfg.has("split") else None
    want_pairs = cfg.has("static") or cfg.has("motion")
    flow = FlowMeter(cfg.motion.preset) if cfg.has("motion") else None
    gap = pair_gap(fps, cfg)
    stitch = embedder is not None and detector is not None
    # why: detectors report a cut up to event_buffer_length frames late; keep the frames either side of it
    recent: deque[tuple[int, np.ndarray]] = deque(maxlen=(detector.event_buffer_length + 4) if stitch else 1)

    cuts: list[int] = []
    pairs: list[tuple[int, int]] = []
    diffs: list[float] = []
    means: list[float] = []
    tops: list[float] = []
    sims: dict[int, float] = {}
    prev_gray: np.ndarray | None = None
    unit = 1.0  # flow px at analysis size -> px per source frame at a 256-px short side
    shape = (src.info.height, src.info.width)
    n = 0
    for i, rgb in enumerate(iter_frames(path, size=size)):  # rgb: (h, w, 3) uint8
        n = i + 1
        if i == 0:
            shape = rgb.shape[:2]
            unit = 256.0 / min(shape) / gap
        if detector is not None:
            found = detector.process_frame(FrameTimecode(i, fps=fps), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if stitch:
                recent.append((i, rgb))
                for tc in found:
                    _similarity(int(tc.frame_num), recent, embedder, sims)
            cuts += [int(tc.frame_num) for tc in found]
        if want_pairs and i % gap == 0:
            gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # (h, w)
            if prev_gray is not None:
                pairs.append((i - gap, i))
                diffs.append(gray_diff(prev_gray, gray))
                if flow is not None:
                    m, t = flow(prev_gray, gray)
                    means.append(m * unit)
                    tops.append(t * unit)
            prev_gray = gray
    if n == 0:
        raise UserError(f"no decodable frames in {path}")
    _check_complete(path, src, n)
    if detector is not None:
        cuts += [int(tc.frame_num) for tc in detector.post_process(FrameTimecode(n - 1, fps=fps))]
    cuts = sorted({c for c in cuts if 0 < c < n})
    p = len(pairs)
    return Analysis(
        num_frames=n,
        size=(int(shape[0]), int(shape[1])),
        gap=gap,
        cuts=cuts,
        pairs=np.asarray(pairs, np.int64).reshape(p, 2),
        diff=np.asarray(diffs, np.float32),
        flow_mean=np.asarray(means if flow is not None else [np.nan] * p, np.float32),
        flow_top5=np.asarray(tops if flow is not None else [np.nan] * p, np.float32),
        cut_similarity=sims,
    )


def _similarity(cut: int, recent: deque, embedder: Embedder, out: dict[int, float]) -> None:
    frames = dict(recent)
    if cut - 1 in frames and cut in frames:
        e = np.asarray(embedder(np.stack([frames[cut - 1], frames[cut]])), np.float64)  # (2, D)
        out[cut] = float(e[0] @ e[1] / max(1e-12, np.linalg.norm(e[0]) * np.linalg.norm(e[1])))


def _check_complete(path: str, src: SourceInfo, decoded: int) -> None:
    """A file that decodes to clearly fewer frames than its header promises is truncated or corrupt."""
    if src.header_frames > 0:
        expected = src.header_frames
        tolerance = max(2, int(0.02 * expected))
    else:  # why: no frame count in the header (Matroska): fall back to the stated duration, loosely
        expected = round(src.info.duration * src.info.fps)
        tolerance = max(int(src.info.fps), int(0.1 * expected))
    if expected - decoded > tolerance:
        raise UserError(f"truncated or corrupt: decoded {decoded} of {expected} frames in {path}")
