"""Reading video over PyAV: `probe` (metadata) and `iter_frames` / `read_video` (streaming decode).

Frames are uint8 RGB numpy arrays (H, W, 3); clips are (T, H, W, 3). Times are seconds from the first frame
of the video stream. Reading can resample to a given fps (by timestamps), clip by time or frame count, and
resize (crop / stretch / pad) in the same swscale pass as the colour conversion. Bad input raises `UserError`.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from longvideo.errors import UserError

__all__ = ["VideoInfo", "iter_frames", "probe", "read_video"]

_log = logging.getLogger(__name__)

_RESIZE_MODES = ("crop", "stretch", "pad")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds
    codec: str


def _open_input(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """Open `path` for reading -> (container, first video stream), or raise UserError."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise UserError(f"video file not found: {p}")
    if not os.path.isfile(p):
        raise UserError(f"not a file: {p}")
    try:
        container = av.open(p, mode="r")
    except (av.FFmpegError, OSError) as e:
        raise UserError(f"not a readable video: {p} ({_reason(e)})") from e
    if not container.streams.video:
        container.close()
        raise UserError(f"no video stream in {p}")
    return container, container.streams.video[0]


def _reason(e: BaseException) -> str:
    """A short one-line reason from an FFmpeg/OS error (its str() repeats errno and path)."""
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(reason).split())


def _nominal_rate(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Metadata of the first video stream.

    num_frames comes from the container header when it has one (a truncated file may decode fewer),
    otherwise from counting packets (no decoding).
    """
    container, stream = _open_input(path)
    p = os.fspath(path)
    with container:
        tb = stream.time_base
        num_frames = stream.frames
        if num_frames <= 0:  # why: Matroska/WebM headers carry no frame count
            try:
                num_frames = sum(1 for pkt in container.demux(stream) if pkt.size > 0)
            except av.FFmpegError as e:
                raise UserError(f"cannot read video {p} ({_reason(e)})") from e
        if stream.duration is not None and tb is not None:
            duration = float(stream.duration * tb)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        fps = _nominal_rate(stream)
        # why: GIF delays are whole centiseconds, so the header rate is rounded (24 fps reads as 25).
        if (stream.codec_context.name == "gif" or not fps) and num_frames > 0 and duration > 0:
            fps = num_frames / duration
        if duration <= 0 and fps > 0:
            duration = num_frames / fps
        cc = stream.codec_context
        return VideoInfo(p, int(num_frames), float(fps), cc.width, cc.height, float(duration), cc.name)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_read_args(
    fps: float | None,
    start: float,
    num_frames: int | None,
    end: float | None,
    size: tuple[int, int] | None,
    resize: str,
) -> tuple[int, int] | None:
    if fps is not None and not (_is_real(fps) and fps > 0):
        raise UserError(f"fps must be a positive number, got {fps!r}")
    if not (_is_real(start) and start >= 0):
        raise UserError(f"start must be a number >= 0 (seconds), got {start!r}")
    if end is not None and not (_is_real(end) and end > start):
        raise UserError(f"end must be a number greater than start ({start}), got {end!r}")
    if num_frames is not None and not (_is_real(num_frames) and num_frames == int(num_frames) >= 0):
        raise UserError(f"num_frames must be an integer >= 0, got {num_frames!r}")
    if resize not in _RESIZE_MODES:
        raise UserError(f"unknown resize mode {resize!r}; expected one of {', '.join(_RESIZE_MODES)}")
    if size is None:
        return None
    pair = isinstance(size, (tuple, list)) and len(size) == 2
    if not (pair and all(_is_real(s) and s == int(s) > 0 for s in size)):
        raise UserError(f"size must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def iter_frames(
    path: str | os.PathLike[str],
    *,
    fps: float | None = None,
    start: float = 0.0,
    num_frames: int | None = None,
    end: float | None = None,
    size: tuple[int, int] | None = None,
    resize: str = "crop",
) -> Iterator[np.ndarray]:
    """Stream uint8 RGB frames (H, W, 3) of `path`, one at a time.

    The clip starts with the frame on screen at `start` and stops before `end` (seconds) or after
    `num_frames` frames. `fps=None` yields the native frames; otherwise output frame k is the source frame on
    screen at `start + k / fps` (frames are duplicated when upsampling, dropped when downsampling).
    `size=(H, W)` resizes with `resize` = "crop" (cover, centre-crop), "stretch" or "pad" (fit, black bars).
    """
    # why: validate here, not in the generator, so bad arguments fail at the call and not at first next().
    hw = _check_read_args(fps, start, num_frames, end, size, resize)
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise UserError(f"video file not found: {p}" if not os.path.exists(p) else f"not a file: {p}")
    return _iter_frames(p, fps, float(start), num_frames, end, hw, resize)


def _iter_frames(
    path: str,
    fps: float | None,
    start: float,
    num_frames: int | None,
    end: float | None,
    size: tuple[int, int] | None,
    resize: str,
) -> Iterator[np.ndarray]:
    container, stream = _open_input(path)
    with container:
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is the bottleneck
        tb = stream.time_base or Fraction(1, 1000)
        # why: container timestamps are rounded to ticks of the time base (GIF: 1/100 s)
        eps = min(float(tb) / 2, 0.01) + 1e-9
        stop = math.inf if end is None else end - eps
        limit = math.inf if num_frames is None else num_frames
        if limit == 0:
            return
        timed = _timed_frames(container, stream, path, start, eps)
        if fps is None:
            picked = _pick_native(timed, start, stop, eps)
        else:
            picked = _pick_resampled(timed, start, stop, fps, eps)
        # why: frame.reformat/to_ndarray(format=) build a new swscale context per call; reuse one instead
        reformatter = VideoReformatter()
        last: tuple[av.VideoFrame, np.ndarray] | None = None
        for count, frame in enumerate(picked, 1):
            if last is not None and last[0] is frame:
                yield last[1].copy()  # why: a duplicate; callers may edit yielded arrays in place
            else:
                last = (frame, _to_rgb(reformatter, frame, size, resize))
                yield last[1]
            if count >= limit:  # why: stop before decoding anything more
                return


def _decode(container: Any, stream: Any, path: str) -> Iterator[av.VideoFrame]:
    """Decoded frames; corrupt packets are skipped (as ffmpeg does) so a truncated file yields its prefix."""
    warned = False
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError as e:
                if not warned:
                    _log.warning("skipping undecodable data in %s (%s)", path, _reason(e))
                    warned = True
                continue
            yield from frames
    except av.FFmpegError as e:
        raise UserError(f"error while reading video {path} ({_reason(e)})") from e


def _timed_frames(
    container: Any, stream: Any, path: str, start: float, eps: float
) -> Iterator[tuple[float, float, av.VideoFrame]]:
    """(time, duration, frame) from at or before `start` onwards; times in seconds from the stream start."""
    tb = stream.time_base or Fraction(1, 1000)
    t0 = stream.start_time or 0  # why: e.g. MPEG-TS clocks start anywhere; our seconds start at 0
    rate = _nominal_rate(stream)
    default_dur = 1 / rate if rate else 0.0
    # why: some demuxers index keyframes by dts, so a seek can land a little after `start`; back off then.
    seek_targets = [start, start - 1.0, 0.0] if start > 0 else [0.0]
    for attempt, seek_to in enumerate(seek_targets):
        if attempt > 0 or seek_to > 0:
            try:
                container.seek(t0 + int(max(seek_to, 0.0) / tb), stream=stream)  # keyframe at/before
            except av.FFmpegError:
                if attempt > 0:
                    raise UserError(f"cannot seek in video {path}") from None
                seek_to = 0.0  # why: unseekable input; the fresh container decodes from the beginning
        prev_t = -default_dur  # a first frame without a timestamp is placed at 0
        frames = _decode(container, stream, path)
        for i, frame in enumerate(frames):
            t = float((frame.pts - t0) * tb) if frame.pts is not None else prev_t + default_dur
            if i == 0 and t > start + eps and seek_to > 0:
                frames.close()
                break  # the seek overshot `start`; try an earlier target
            dur = float(frame.duration * tb) if frame.duration else default_dur
            prev_t = t
            yield t, dur, frame
        else:
            return


def _pick_native(
    timed: Iterator[tuple[float, float, av.VideoFrame]], start: float, stop: float, eps: float
) -> Iterator[av.VideoFrame]:
    """The frame on screen at `start`, then every following frame with time < `stop`."""
    shown: tuple[float, float, av.VideoFrame] | None = None  # latest frame at/before start, not yet yielded
    for t, dur, frame in timed:
        if t <= start + eps:
            shown = (t, dur, frame)
            continue
        if shown is not None:
            yield shown[2]
            shown = None
        if t >= stop:
            return
        yield frame
    # why: the video ended; `start` may still fall inside the last frame's display time (or past the end).
    if shown is not None and start < shown[0] + shown[1] - eps:
        yield shown[2]


def _pick_resampled(
    timed: Iterator[tuple[float, float, av.VideoFrame]], start: float, stop: float, fps: float, eps: float
) -> Iterator[av.VideoFrame]:
    """Output frame k = the last source frame with time <= start + k / fps."""
    k = 0
    target = start
    prev: tuple[float, float, av.VideoFrame] | None = None
    for t, dur, frame in timed:
        while t > target + eps:  # `frame` is not yet on screen at `target`: `prev` is
            if target >= stop:
                return
            # why: a target before the first frame (e.g. an edit-list offset) gets the first frame.
            yield prev[2] if prev is not None else frame
            k += 1
            target = start + k / fps
        prev = (t, dur, frame)
    if prev is None:
        return
    # why: after the last frame, it stays on screen for its duration.
    while target < stop and target < prev[0] + prev[1] - eps:
        yield prev[2]
        k += 1
        target = start + k / fps


def _to_rgb(
    reformatter: VideoReformatter, frame: av.VideoFrame, size: tuple[int, int] | None, resize: str
) -> np.ndarray:
    """Decoded frame -> uint8 (H, W, 3); one swscale pass does the colour conversion and the scaling."""
    if size is None:
        return reformatter.reformat(frame, format="rgb24").to_ndarray()
    out_h, out_w = size
    h, w = frame.height, frame.width
    if resize == "stretch":
        sh, sw = out_h, out_w
    elif resize == "crop":
        scale = max(out_h / h, out_w / w)
        sh, sw = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    else:  # pad
        scale = min(out_h / h, out_w / w)
        sh, sw = min(out_h, max(1, round(h * scale))), min(out_w, max(1, round(w * scale)))
    # why: swscale's bicubic widens its kernel when shrinking, so downscaling is antialiased too.
    bicubic = Interpolation.BICUBIC
    rgb = reformatter.reformat(frame, width=sw, height=sh, format="rgb24", interpolation=bicubic).to_ndarray()
    # rgb: (sh, sw, 3)
    top, left = abs(sh - out_h) // 2, abs(sw - out_w) // 2
    if resize == "crop":
        return np.ascontiguousarray(rgb[top : top + out_h, left : left + out_w])
    if resize == "pad":
        canvas = np.zeros((out_h, out_w, 3), np.uint8)
        canvas[top : top + sh, left : left + sw] = rgb
        return canvas
    return rgb


def read_video(
    path: str | os.PathLike[str],
    *,
    fps: float | None = None,
    start: float = 0.0,
    num_frames: int | None = None,
    end: float | None = None,
    size: tuple[int, int] | None = None,
    resize: str = "crop",
) -> np.ndarray:
    """The selected frames as one uint8 array (T, H, W, 3); see `iter_frames` for the arguments."""
    it = iter_frames(path, fps=fps, start=start, num_frames=num_frames, end=end, size=size, resize=resize)
    frames = list(it)
    if not frames:
        raise UserError(f"no frames selected from {os.fspath(path)} (start={start}, end={end})")
    return np.stack(frames)
