"""The weight-free filters: static (frame difference), motion (DIS optical flow), text (RapidOCR).

Per-pair measurements come from the analysis pass (analyse.py); `clip_scores` aggregates the pairs that lie
inside a clip and `decide_static_motion` / `decide_text` turn scores into a drop reason (None: keep). OCR
runs on a few sampled frames per clip (`TextMeter`), with recognition on: detection alone fires on texture
(reference/data_eval.md §2b).
"""

from __future__ import annotations

import cv2
import numpy as np

from longvideo.curate.config import CurateConfig, TextConfig

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def gray_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 gray frames (H, W), in gray levels."""
    return float(cv2.absdiff(a, b).mean())


class FlowMeter:
    """DIS dense optical flow between two gray frames -> (mean magnitude, mean of the top 5%), in pixels.

    The top-5% mean is VBench's dynamic-degree statistic: it sees a small moving object that the mean of a
    mostly still frame hides.
    """

    def __init__(self, preset: str = "medium") -> None:
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])

    def __call__(self, prev: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
        flow = self._dis.calc(prev, cur, None)  # (H, W, 2) float32, pixels
        mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).ravel()  # (H*W,)
        k = max(1, mag.size // 20)
        top = np.partition(mag, mag.size - k)[-k:]
        return float(mag.mean()), float(top.mean())


class TextMeter:
    """RapidOCR det + rec; the score of a frame is the area of recognised text boxes / frame area."""

    def __init__(self, cfg: TextConfig) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.cfg = cfg
        # why: one thread per worker process (the runner parallelises over inputs); the detector gets a
        # bounded input size instead of RapidOCR's default upscaling of the short side to 736 px.
        self._ocr = RapidOCR(
            intra_op_num_threads=1,
            inter_op_num_threads=1,
            text_score=cfg.min_score,
            det_limit_side_len=cfg.det_max_side,
            det_limit_type="max",
        )

    def frame(self, rgb: np.ndarray) -> tuple[float, int]:
        """uint8 (H, W, 3) -> (text area ratio in [0, 1], recognised boxes)."""
        h, w = rgb.shape[:2]
        result, _ = self._ocr(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), use_cls=False)
        mask = np.zeros((h, w), np.uint8)
        boxes = 0
        for box, text, score in result or []:
            if score < self.cfg.min_score or len(str(text).strip()) < self.cfg.min_chars:
                continue
            cv2.fillPoly(mask, [np.round(np.asarray(box, np.float32)).astype(np.int32)], 1)
            boxes += 1
        return float(mask.mean()), boxes  # why: the union of the boxes, so overlaps count once

    def __call__(self, frames: np.ndarray) -> tuple[float, int]:
        """Frames (N, H, W, 3) -> the largest (area, boxes) over them: one frame with a title is enough."""
        scores = [self.frame(f) for f in frames]
        return max(a for a, _ in scores), max(b for _, b in scores)


def clip_scores(
    pairs: np.ndarray,
    diff: np.ndarray,
    flow_mean: np.ndarray,
    flow_top5: np.ndarray,
    start: int,
    end: int,
    cfg: CurateConfig,
) -> dict:
    """Static and motion scores of the clip [start, end) from the pairs that lie inside it.

    pairs: (P, 2) frame indices; diff, flow_mean, flow_top5: (P,). A clip without a pair (shorter than
    the pair gap) gets None scores and is never dropped for them.
    """
    inside = (pairs[:, 0] >= start) & (pairs[:, 1] < end) if len(pairs) else np.zeros(0, bool)
    out: dict = {"static_ratio": None, "frame_diff": None, "flow_mean": None, "flow_top5": None}
    if not inside.any():
        return out
    if cfg.has("static"):
        d = diff[inside]
        out["static_ratio"] = round(float((d < cfg.static.diff_threshold).mean()), 4)
        out["frame_diff"] = round(float(d.mean()), 4)
    if cfg.has("motion"):
        out["flow_mean"] = round(float(flow_mean[inside].mean()), 4)
        out["flow_top5"] = round(float(flow_top5[inside].mean()), 4)
    return out


def decide_static_motion(scores: dict, cfg: CurateConfig) -> str | None:
    """The first static / motion drop reason that applies to `scores`, or None."""
    ratio = scores["static_ratio"]
    if cfg.has("static") and ratio is not None and ratio > cfg.static.max_static_ratio:
        return "static"
    if cfg.has("motion") and scores["flow_top5"] is not None:
        if scores["flow_top5"] < cfg.motion.min_flow_top5:
            return "low_motion"
        if cfg.motion.max_flow_mean is not None and scores["flow_mean"] > cfg.motion.max_flow_mean:
            return "high_motion"
    return None


def decide_text(scores: dict, cfg: CurateConfig) -> str | None:
    if cfg.has("text") and scores["text_area"] is not None and scores["text_area"] > cfg.text.max_area:
        return "text"
    return None
