"""Video IO over PyAV: probe, streaming read with fps resampling / clipping / resizing, streaming write.

Frames are uint8 RGB numpy arrays (H, W, 3); clips are (T, H, W, 3). Models use float tensors (C, T, H, W)
in [-1, 1]: `to_uint8_frames` / `from_uint8_frames` convert between the two. Times are seconds from the
first frame of the video stream. Bad input (paths, files, arguments) raises `UserError`.

Modules: `read` (probe, iter_frames, read_video), `write` (VideoWriter, write_video), `tensors` (the two
conversions). Import from here, not from the modules.
"""

from longvideo.data.video_io.read import VideoInfo, iter_frames, probe, read_video
from longvideo.data.video_io.tensors import from_uint8_frames, to_uint8_frames
from longvideo.data.video_io.write import VideoWriter, write_video

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
