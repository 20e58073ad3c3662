"""Video IO over PyAV: probe, streaming read with fps resampling / clipping / resizing, streaming write.

Frames are uint8 RGB numpy arrays (H, W, 3); clips are (T, H, W, 3). Models use float tensors (C, T, H, W)
in [-1, 1]: `to_uint8_frames` / `from_uint8_frames` convert between the two. Times are seconds from the
first frame of the video stream. Bad input (paths, files, arguments) raises `UserError`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import av.filter
import numpy as np
import torch
from av.video.reformatter import (
    ColorPrimaries,
    ColorRange,
    Colorspace,
    ColorTrc,
    Interpolation,
    VideoReformatter,
)

from longvideo.errors import UserError

__all__ = [
    "VideoInfo",
    "VideoWriter",
    "from_uint8_frames",
    "iter_frames",
    "probe",
    "read_video",
    "to_uint8_frames",
    "write_video",
]

_log = logging.getLogger(__name__)

_RESIZE_MODES = ("crop", "stretch", "pad")
# Extension -> muxer name; passed explicitly because atomic writes go to a temp name.
_MUXERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".gif": "gif"}


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds
    codec: str


# ----------------------------------------------------------------------------------------------- reading


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
        # why: frame.reformat/to_ndarray(format=) build a new swscale context per call (~10x slower)
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


# ----------------------------------------------------------------------------------------------- writing


def _as_frame_batch(x: Any) -> np.ndarray:
    """A frame (H, W, 3) or batch (T, H, W, 3), numpy or torch, uint8 -> numpy (T, H, W, 3)."""
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.uint8:
            raise UserError(f"frames must be uint8, got torch {x.dtype} (see to_uint8_frames)")
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise UserError(f"frames must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype != np.uint8:
        raise UserError(f"frames must be uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"frames must be (H, W, 3) or (T, H, W, 3) RGB, got shape {tuple(x.shape)}")
    return x


class VideoWriter:
    """Frame-by-frame video writer (a context manager); the frame size is set by the first frame.

    .mp4/.mkv/.mov: H.264 (libx264, yuv420p, BT.709) with `quality` as CRF (0 best .. 51 worst; 18 is
    visually lossless). .gif: per-frame adaptive 256-colour palette (`quality` unused). With `atomic`, frames
    go to a hidden temp file next to `path` that replaces `path` only on a successful close.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        *,
        quality: int = 18,
        codec: str | None = None,
        atomic: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        suffix = Path(self.path).suffix.lower()
        if suffix not in _MUXERS:
            known = ", ".join(_MUXERS)
            raise UserError(f"unknown video extension {suffix!r} for {self.path}; use one of {known}")
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps < 10_000:
            raise UserError(f"fps must be a positive number, got {fps!r}")
        if isinstance(quality, bool) or not isinstance(quality, numbers.Integral) or not 0 <= quality <= 51:
            raise UserError(f"quality (CRF) must be an integer in 0..51, got {quality!r}")
        self._gif = suffix == ".gif"
        self._codec = codec or ("gif" if self._gif else "libx264")
        if self._gif and self._codec != "gif":
            raise UserError(f"GIF output supports only the gif codec, got {codec!r}")
        try:
            av.Codec(self._codec, "w")
        except Exception as e:  # why: PyAV raises different types across versions for unknown codecs
            raise UserError(f"unknown video encoder {self._codec!r}") from e
        if os.path.isdir(self.path):
            raise UserError(f"output path is a directory: {self.path}")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise UserError(f"output directory does not exist: {parent}")
        if not os.access(parent, os.W_OK):
            raise UserError(f"output directory is not writable: {parent}")
        self._rate = Fraction(float(fps)).limit_denominator(10_000)  # 29.97002997 -> 30000/1001
        self._quality = int(quality)
        self._atomic = atomic
        name = os.path.basename(self.path)
        # why: the pid keeps two processes writing the same path from clobbering each other's temp file.
        self._target = os.path.join(parent, f".{name}.{os.getpid()}.tmp{suffix}") if atomic else self.path
        try:
            open(self._target, "wb").close()  # why: av.open defers creating the file; fail fast here instead
            self._container = av.open(self._target, mode="w", format=_MUXERS[suffix])
        except (av.FFmpegError, OSError) as e:
            with contextlib.suppress(OSError):
                os.remove(self._target)
            raise UserError(f"cannot write {self.path} ({_reason(e)})") from e
        self._stream: Any = None
        self._graph: Any = None  # GIF palette filter graph
        self._reformatter = VideoReformatter()  # rgb24 -> yuv420p, swscale context reused across frames
        self._shape: tuple[int, int] | None = None  # (H, W), fixed by the first frame
        self._count = 0
        self._closed = False

    @property
    def frames_written(self) -> int:
        return self._count

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):  # why: never closed: do not leave a hidden temp file behind
            self._abort(remove=self._atomic)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        elif self._atomic:
            self._abort()
        else:
            try:  # why: non-atomic callers asked for the partial video; finish it but keep the first error
                self.close()
            except Exception:
                self._abort(remove=False)

    def write(self, frame: np.ndarray | torch.Tensor) -> None:
        """Append a uint8 frame (H, W, 3) or a batch (T, H, W, 3), numpy or torch."""
        if self._closed:
            raise RuntimeError(f"VideoWriter for {self.path} is closed")
        for rgb in _as_frame_batch(frame):
            if self._shape is None:
                self._open_stream(rgb.shape[0], rgb.shape[1])
            elif rgb.shape[:2] != self._shape:
                raise UserError(f"frame size {rgb.shape[:2]} differs from the first frame's {self._shape}")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            vf.pts = self._count
            vf.time_base = 1 / self._rate
            self._count += 1
            if self._gif:
                self._graph.vpush(vf)
                self._drain_graph()
            else:
                # why: convert explicitly so the pixels match the BT.709 tags set in _open_stream.
                yuv = self._reformatter.reformat(
                    vf, format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
                )
                self._encode(yuv)

    def _open_stream(self, h: int, w: int) -> None:
        if not self._gif and (h % 2 or w % 2):
            raise UserError(f"{self.path}: H.264 (yuv420p) needs even width and height, got {w}x{h}")
        try:
            # why: CRF is an x264/x265 option; other encoders use their own defaults.
            crf = {"crf": str(self._quality)} if self._codec in ("libx264", "libx265") else {}
            stream = self._container.add_stream(self._codec, rate=self._rate, options=crf)
            stream.width, stream.height = w, h
            if self._gif:
                stream.pix_fmt = "pal8"
                self._graph = _gif_palette_graph(w, h, 1 / self._rate)
            else:
                stream.pix_fmt = "yuv420p"
                cc = stream.codec_context
                # why: untagged H.264 leaves players guessing the matrix; tag what we convert with.
                cc.colorspace, cc.color_range = Colorspace.ITU709, ColorRange.MPEG
                cc.color_primaries, cc.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
            stream.codec_context.open()  # why: surface codec/option errors here, as UserError
        except av.FFmpegError as e:
            raise UserError(f"cannot encode {self.path} with {self._codec} ({_reason(e)})") from e
        self._stream = stream
        self._shape = (h, w)

    def _encode(self, frame: av.VideoFrame | None) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _drain_graph(self) -> None:
        while True:
            try:
                self._encode(self._graph.vpull())
            except (av.BlockingIOError, av.EOFError):  # needs more input / fully flushed
                return

    def close(self) -> None:
        """Flush the encoder and finish the file (then move it onto `path` if atomic). Idempotent."""
        if self._closed:
            return
        if self._stream is None:
            self._abort()
            raise UserError(f"no frames were written to {self.path}")
        try:
            if self._gif:
                self._graph.vpush(None)
                self._drain_graph()
            self._encode(None)
            self._container.close()
        except BaseException:
            self._abort()
            raise
        self._closed = True
        if self._atomic:
            os.replace(self._target, self.path)

    def _abort(self, remove: bool = True) -> None:
        """Close without finishing and (by default) delete the output: no partial file is left behind."""
        self._closed = True
        with contextlib.suppress(Exception):  # why: the container may be half-set-up; it is discarded anyway
            self._container.close()
        if remove and os.path.exists(self._target):
            os.remove(self._target)


def _gif_palette_graph(w: int, h: int, time_base: Fraction) -> Any:
    """rgb24 -> pal8 with a fresh palette per frame (streaming; swscale cannot do rgb24 -> pal8).

    buffer -> split -> palettegen(stats_mode=single) -> paletteuse(new=1) -> buffersink; split also feeds
    the frame itself into paletteuse.
    """
    graph = av.filter.Graph()
    src = graph.add_buffer(width=w, height=h, format="rgb24", time_base=time_base)
    split = graph.add("split")
    palettegen = graph.add("palettegen", "stats_mode=single")
    paletteuse = graph.add("paletteuse", "new=1")
    sink = graph.add("buffersink")
    src.link_to(split)
    split.link_to(paletteuse, 0, 0)
    split.link_to(palettegen, 1, 0)
    palettegen.link_to(paletteuse, 0, 1)
    paletteuse.link_to(sink)
    graph.configure()
    return graph


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
    fps: float,
    *,
    quality: int = 18,
) -> None:
    """Write frames (an iterable of (H, W, 3) or one (T, H, W, 3) array/tensor, uint8) to `path`."""
    with VideoWriter(path, fps, quality=quality) as writer:
        if isinstance(frames, (np.ndarray, torch.Tensor)):
            writer.write(frames)
        else:
            for frame in frames:
                writer.write(frame)


# ------------------------------------------------------------------------------------ tensor conversion


def to_uint8_frames(x: torch.Tensor) -> np.ndarray:
    """Model output in [-1, 1], (C, T, H, W) or (1, C, T, H, W), C = 3 (or 1) -> uint8 (T, H, W, 3)."""
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise UserError(f"expected a batch of one video (1, C, T, H, W), got shape {tuple(x.shape)}")
        x = x[0]
    if x.ndim != 4 or x.shape[0] not in (1, 3):
        raise UserError(f"expected (C, T, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    u8 = ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # (C, T, H, W)
    u8 = u8.expand(3, -1, -1, -1)  # grey -> RGB (no-op for C = 3)
    return u8.permute(1, 2, 3, 0).cpu().numpy().copy()  # (T, H, W, 3), contiguous


def from_uint8_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]; `to_uint8_frames` inverts it exactly."""
    t = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise UserError(f"expected uint8 frames (T, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return (t.permute(3, 0, 1, 2).float() / 127.5 - 1).contiguous()  # (3, T, H, W)
