"""Probe: container metadata of one input, plus the keyframe positions the cutter needs.

`video_io.probe` gives the stream's frames, fps, size, duration and codec; one demux pass (packets only, no
decoding, so cheap next to the later steps) adds the keyframe frame indices, the header's own frame count
and the pixel format. Anything unreadable raises `UserError`, which the runner records in errors.jsonl.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import av

from longvideo.data.video_io import VideoInfo, probe
from longvideo.errors import UserError


@dataclass(frozen=True)
class SourceInfo:
    info: VideoInfo
    pix_fmt: str
    header_frames: int  # frame count the container header states; 0 when it has none (e.g. Matroska)
    packets: int  # video packets with data
    keyframes: list[int] = field(default_factory=list)  # frame indices (pts x fps) of keyframe packets

    def row(self) -> dict:
        """The probe columns of a manifest row."""
        i = self.info
        return {
            "src_frames": i.num_frames,
            "src_fps": round(i.fps, 6),
            "src_height": i.height,
            "src_width": i.width,
            "src_duration": round(i.duration, 6),
            "codec": i.codec,
        }


def probe_source(path: str | os.PathLike[str]) -> SourceInfo:
    """Metadata + keyframes of `path`; raises UserError for anything that is not a usable video."""
    info = probe(path)
    if info.width <= 0 or info.height <= 0:
        raise UserError(f"video stream without a frame size in {info.path}")
    if info.fps <= 0:
        raise UserError(f"video stream without a frame rate in {info.path}")
    try:
        with av.open(os.fspath(path)) as container:
            stream = container.streams.video[0]
            tb = stream.time_base
            t0 = stream.start_time or 0
            pix_fmt = stream.codec_context.pix_fmt or ""
            keyframes: list[int] = []
            packets = 0
            for pkt in container.demux(stream):
                if pkt.size == 0:
                    continue
                packets += 1
                if pkt.is_keyframe and pkt.pts is not None and tb is not None:
                    keyframes.append(round(float((pkt.pts - t0) * tb) * info.fps))
            header = max(0, stream.frames or 0)
    except av.FFmpegError as e:
        raise UserError(f"cannot read packets of {info.path} ({' '.join(str(e).split())})") from e
    if packets == 0:
        raise UserError(f"no video packets in {info.path}")
    return SourceInfo(info, pix_fmt, header, packets, sorted(set(keyframes)))
