"""Synthetic videos with known ground truth, for the curation tests and benchmark.

A video is a list of scenes joined by hard cuts. Each scene is a two-scale noise texture in its own hue,
translated by `speed` pixels per frame (sub-pixel, bilinear), optionally with a caption bar burned in with
cv2.putText. So every property the curation steps judge is known: where the cuts are (frame indices), which
scenes are static, how fast they move, and which carry text. `jump` starts a scene on the previous scene's
texture at another place: a false cut that only event stitching should merge.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from longvideo.data.video_io import VideoWriter

GOLDEN = 0.6180339887


@dataclass(frozen=True)
class Scene:
    seconds: float
    seed: int  # texture and hue; scenes with different seeds look different
    speed: float = 0.0  # pixels per frame on the canvas
    angle: float = 0.0  # direction of motion, degrees (0 = content moves right)
    text: str | None = None  # caption burned into a bar near the bottom
    jump: bool = False  # same texture as the previous scene, shifted: a false cut


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 (h, w, 3) RGB noise: coarse blobs plus fine detail (so flow has texture), hue from `seed`."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.random((max(2, h // 24), max(2, w // 24))).astype(np.float32), (w, h))
    fine = cv2.resize(rng.random((max(2, h // 4), max(2, w // 4))).astype(np.float32), (w, h))
    value = 0.65 * coarse + 0.35 * fine  # (h, w) in [0, 1]
    hue = (seed * GOLDEN % 1.0) * 180  # OpenCV hue is 0..180; golden-ratio steps keep neighbours apart
    hsv = np.empty((h, w, 3), np.uint8)
    hsv[..., 0] = np.mod(hue + 20 * (coarse - 0.5), 180).astype(np.uint8)
    hsv[..., 1] = (120 + 120 * fine).astype(np.uint8)
    hsv[..., 2] = (40 + 215 * value).clip(0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def burn_text(frame: np.ndarray, text: str) -> np.ndarray:
    """Draw `text` in white on a black bar near the bottom of `frame` (in place), ~85% of its width."""
    h, w = frame.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, 2)
    scale = 0.85 * w / tw
    thick = max(1, round(2 * scale))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    x, y = (w - tw) // 2, int(h * 0.9) - base
    pad = max(2, th // 3)
    cv2.rectangle(frame, (x - pad, y - th - pad), (x + tw + pad, y + base + pad), (0, 0, 0), -1)
    cv2.putText(frame, text, (x, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return frame


def scene_frames(
    scene: Scene, n: int, size: tuple[int, int], origin: tuple[float, float]
) -> Iterator[np.ndarray]:
    """`n` uint8 frames (H, W, 3) of `scene`; `origin` shifts the view from the texture's centre (pixels)."""
    h, w = size
    dx = scene.speed * math.cos(math.radians(scene.angle))
    dy = scene.speed * math.sin(math.radians(scene.angle))
    big = texture(3 * h, 3 * w, scene.seed)  # fixed size, so a jump scene sees the same texture
    # the view's top-left moves by (-dx, -dy) per frame, centred on the texture over the scene
    x0 = w + origin[0] + dx * n / 2
    y0 = h + origin[1] + dy * n / 2
    for t in range(n):
        m = np.float32([[1, 0, x0 - dx * t], [0, 1, y0 - dy * t]])
        # why: reflection only matters for extreme speed x length; the content still moves consistently
        frame = cv2.warpAffine(
            big, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT101
        )
        if scene.text:
            burn_text(frame, scene.text)
        yield frame


def scene_lengths(scenes: Sequence[Scene], fps: float) -> list[int]:
    return [max(1, round(s.seconds * fps)) for s in scenes]


def cut_frames(scenes: Sequence[Scene], fps: float) -> list[int]:
    """Ground-truth cuts: the first frame of every scene after the first (jump scenes included)."""
    return [int(c) for c in np.cumsum(scene_lengths(scenes, fps))[:-1]]


def write_video(
    path: str | os.PathLike[str],
    scenes: Sequence[Scene],
    fps: float = 10.0,
    size: tuple[int, int] = (120, 160),
    quality: int = 18,
    codec: str | None = None,
) -> list[int]:
    """Render `scenes` back to back into `path` (VideoWriter; H.264 unless `codec`). Returns the cuts."""
    with VideoWriter(path, fps, quality=quality, codec=codec) as writer:
        for k, (scene, n) in enumerate(zip(scenes, scene_lengths(scenes, fps), strict=True)):
            seed = scene.seed
            origin = (0.0, 0.0)
            if scene.jump and k > 0:
                # why: the previous scene's texture, a third of a frame away: a cut in content, not in look
                seed = scenes[k - 1].seed
                origin = (size[1] / 3, size[0] / 3)
            for frame in scene_frames(
                Scene(scene.seconds, seed, scene.speed, scene.angle, scene.text), n, size, origin
            ):
                writer.write(frame)
    return cut_frames(scenes, fps)
