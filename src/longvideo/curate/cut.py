"""Cutting clip files: stream copy where the clip is exactly a run of whole H.264 GOPs, re-encode otherwise.

Stream copy needs no decoding and loses nothing, but only works when the clip starts on a keyframe and ends
on one (or at the end of the file), and every packet between them shows a frame inside the clip (closed
GOPs); it is checked packet by packet and otherwise falls back to a re-encode. Clips are always H.264 yuv420p
mp4 (the project's file contract), so other codecs and pixel formats are re-encoded. Audio is not kept.

Files are written under a hidden temp name and renamed, so a crash never leaves a partial clip.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import av

from longvideo.curate.config import CutConfig
from longvideo.curate.probe import SourceInfo
from longvideo.curate.split import Span
from longvideo.data.video_io import VideoWriter, iter_frames
from longvideo.errors import UserError
from longvideo.outputs import temp_path


def clip_relpath(source: str, index: int) -> str:
    """OUT-relative path of clip `index` of `source`: clips/<2 hex>/<stem>_<8 hex>_<index>.mp4.

    The hash of the source path keeps equal stems from different folders apart and spreads the files
    over 256 folders."""
    h = hashlib.sha1(source.encode()).hexdigest()
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source).stem)[:60]
    return f"clips/{h[:2]}/{stem}_{h[:8]}_{index:04d}.mp4"


def target_size(src: SourceInfo, cfg: CutConfig) -> tuple[int, int]:
    """(H, W) of re-encoded clips: the source size (or scaled to max_short_side), made even for yuv420p."""
    h, w = src.info.height, src.info.width
    if cfg.max_short_side and min(h, w) > cfg.max_short_side:
        s = cfg.max_short_side / min(h, w)
        h, w = round(h * s), round(w * s)
    return max(2, h // 2 * 2), max(2, w // 2 * 2)


def write_clip(source: str, src: SourceInfo, span: Span, num_frames: int, out: Path, cfg: CutConfig) -> dict:
    """Write frames [span.start, span.end) of `source` to `out` -> {cut, num_frames, height, width}."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_path(out))  # swept by the next run if this process is killed
    try:
        if cfg.mode in ("auto", "copy") and _copyable(src, span, num_frames, cfg):
            frames = _stream_copy(source, src, span, num_frames, tmp)
            if frames is not None:
                os.replace(tmp, out)
                return {
                    "cut": "copy",
                    "num_frames": frames,
                    "height": src.info.height,
                    "width": src.info.width,
                }
            if cfg.mode == "copy":
                raise UserError("the clip is not a run of whole GOPs: cannot stream-copy")
        elif cfg.mode == "copy":
            raise UserError("the clip is not whole GOPs of H.264 yuv420p: cannot stream-copy")
        frames, (h, w) = _reencode(source, src, span, tmp, cfg)
        os.replace(tmp, out)
        return {"cut": "reencode", "num_frames": frames, "height": h, "width": w}
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _copyable(src: SourceInfo, span: Span, num_frames: int, cfg: CutConfig) -> bool:
    i = src.info
    if i.codec != "h264" or src.pix_fmt != "yuv420p" or i.height % 2 or i.width % 2:
        return False
    if target_size(src, cfg) != (i.height, i.width):
        return False
    keys = set(src.keyframes)
    return span.start in keys and (span.end in keys or span.end >= num_frames)


def _stream_copy(source: str, src: SourceInfo, span: Span, num_frames: int, tmp: Path) -> int | None:
    """Remux the packets of [start, end) into `tmp`; None when they are not exactly that clip's frames."""
    fps = src.info.fps
    with av.open(source) as inp:
        stream = inp.streams.video[0]
        tb, t0 = stream.time_base, stream.start_time or 0

        def frame_of(pkt) -> int:
            return round(float((pkt.pts - t0) * tb) * fps)

        packets = []
        base = None
        with contextlib.suppress(av.FFmpegError):  # why: seeking is a speed-up only; demux from 0 otherwise
            inp.seek(t0 + int(span.start / fps / tb), stream=stream, backward=True)
        for pkt in inp.demux(stream):
            if pkt.size == 0 or pkt.pts is None or pkt.dts is None:
                continue
            idx = frame_of(pkt)
            if base is None:
                if pkt.is_keyframe and idx == span.start:
                    base = pkt.pts
                elif idx > span.start + 1 and pkt.is_keyframe:
                    return None  # the seek went past the start keyframe
                else:
                    continue
            elif pkt.is_keyframe and idx >= span.end:
                break
            packets.append(pkt)
        if base is None or len(packets) != span.frames:
            return None
        if sorted(frame_of(p) for p in packets) != list(range(span.start, span.end)):
            return None  # open GOP or a frame outside the clip: a copy would not decode exactly
        with av.open(str(tmp), "w", format="mp4") as out:
            ostream = out.add_stream_from_template(stream)
            for pkt in packets:
                pkt.pts -= base
                pkt.dts -= base
                pkt.stream = ostream
                out.mux(pkt)
    return len(packets)


def _reencode(
    source: str, src: SourceInfo, span: Span, tmp: Path, cfg: CutConfig
) -> tuple[int, tuple[int, int]]:
    """Decode [start, end) and encode it with libx264 (CRF `cfg.crf`, preset `cfg.preset`, BT.709 tags)."""
    fps = src.info.fps
    h, w = target_size(src, cfg)
    size = None if (h, w) == (src.info.height, src.info.width) else (h, w)
    frames = iter_frames(source, start=span.start / fps, end=span.end / fps, size=size)
    # why VideoWriter: its x264 settings make the clip a function of its frames (reruns give the same bytes)
    with VideoWriter(tmp, fps, quality=cfg.crf, preset=cfg.preset, atomic=False) as writer:
        for rgb in frames:  # (h, w, 3) uint8
            writer.write(rgb)
        if writer.frames_written == 0:
            raise UserError(f"no frames decoded for clip [{span.start}, {span.end}) of {source}")
    return writer.frames_written, (h, w)
