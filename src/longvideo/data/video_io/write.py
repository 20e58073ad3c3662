"""Writing video over PyAV: `VideoWriter` (streaming, frame by frame) and `write_video` (all at once).

.mp4/.mkv/.mov are H.264 (libx264, yuv420p, tagged BT.709); .gif gets a fresh 256-colour palette per frame.
Writes are atomic by default: frames go to a hidden temp file that replaces the target only on a successful
close. Frames are uint8 RGB (H, W, 3) or batches (T, H, W, 3), numpy or torch. Bad input raises `UserError`.

Reproducible: the same frames and settings give a byte-identical file (`x264_options`, `X264_THREADS`); as
x264's C, SSE and AVX2 code are bit-exact with each other, another machine with the same PyAV build should
write the same bytes (checked on one machine only).
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import av.filter
import numpy as np
import torch
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc, VideoReformatter

from longvideo.data.video_io.read import _reason
from longvideo.errors import UserError
from longvideo.outputs import temp_path

__all__ = ["VideoWriter", "write_video", "x264_options"]

# Extension -> muxer name; passed explicitly because atomic writes go to a temp name.
_MUXERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".gif": "gif"}
# x264 frame threads, fixed: the bitstream depends on the thread count, so "auto" (the core count) would make
# the file depend on the machine. Frame threads (not slices) keep one slice per frame at any count.
X264_THREADS = 4


def x264_options(crf: int, preset: str | None = None) -> dict[str, str]:
    """libx264 options that make its output a function of the frames and these settings alone.

    With x264's AVX-512 code the bitstream depends on memory outside the frames: on an AVX-512 CPU, 12 of 15
    writes of the same 97 64x64 frames gave different files (decoded frames off by up to 22 levels), and
    equal frames in fresh buffers changed it. Its AVX2 code is bit-exact with its C code and did not vary,
    so on such CPUs the encoder is held to AVX2 (as fast here; BENCHMARKS.md, Video IO).
    """
    opts = {"crf": str(crf)}
    if preset is not None:
        opts["preset"] = preset
    if _has_avx512():
        opts["x264-params"] = "asm=AVX2"
    return opts


@functools.cache
def _has_avx512() -> bool:
    """Whether the CPU (and OS) run AVX-512, as x264 checks (F, CD, BW, DQ, VL), and AVX2 for the cap."""
    need = ("AVX2", "AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL")
    try:  # numpy's runtime dispatch table: every OS, with OS support checked
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats  # numpy < 2
        except ImportError:
            feats = None
    if feats is not None:
        return all(feats.get(k, False) for k in need)
    try:  # why: a fallback for numpy builds without the table
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {k.lower() for k in need} <= set(flags)


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
    visually lossless) and `preset` as x264's speed/size trade-off (default "medium"). .gif: per-frame
    adaptive 256-colour palette (`quality` unused). With `atomic`, frames go to a hidden temp file next to
    `path` that replaces `path` only on a successful close.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        *,
        quality: int = 18,
        codec: str | None = None,
        preset: str | None = None,
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
        self._preset = preset
        self._atomic = atomic
        # why: the pid keeps two processes writing the same path from clobbering each other's temp file
        # (the commands sweep those of killed runs: outputs.sweep_temps)
        self._target = temp_path(self.path) if atomic else self.path
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
            if self._codec == "libx264":
                options = x264_options(self._quality, self._preset)
            elif self._codec == "libx265":
                options = {"crf": str(self._quality)}
            else:
                options = {}
            stream = self._container.add_stream(self._codec, rate=self._rate, options=options)
            stream.width, stream.height = w, h
            if self._codec == "libx264":
                stream.codec_context.thread_type = "FRAME"
                stream.codec_context.thread_count = X264_THREADS
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
