"""Tests for longvideo.data.video_io: round trips, resampling, clips, resizing, the writer, errors."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

from longvideo.data.video_io import (
    VideoWriter,
    from_uint8_frames,
    iter_frames,
    probe,
    read_video,
    to_uint8_frames,
    write_video,
)
from longvideo.data.video_io.read import _timed_frames
from longvideo.errors import UserError

RED = (220, 40, 40)
BITS = 10  # frame index encoded in 10 big black/white blocks: survives H.264 loss, counts to 1023
BLOCK = 8


def index_frame(k: int) -> np.ndarray:
    """(16, 80, 3) frame whose i-th 8-pixel-wide column block is white iff bit i of k is set."""
    bits = (k >> np.arange(BITS)) & 1  # (BITS,)
    row = np.repeat(bits * 255, BLOCK).astype(np.uint8)  # (80,)
    return np.repeat(np.broadcast_to(row[None, :, None], (1, BITS * BLOCK, 3)), 16, axis=0)


def decode_index(frame: np.ndarray) -> int:
    """Inverse of index_frame, reading the mean of each block's inner pixels."""
    inner = frame[4:-4].reshape(frame.shape[0] - 8, BITS, BLOCK, 3)[:, :, 2:-2]  # skip edges (chroma bleed)
    bits = inner.mean(axis=(0, 2, 3)) > 128
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def indices(frames) -> list[int]:
    return [decode_index(f) for f in frames]


@pytest.fixture(scope="module")
def indexed_mp4(tmp_path_factory) -> Path:
    """48 frames at 24 fps (2 s); frame k encodes k."""
    path = tmp_path_factory.mktemp("vid") / "indexed.mp4"
    write_video(path, (index_frame(k) for k in range(48)), fps=24, quality=10)
    return path


def one_line_user_error(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", ["mp4", "mkv", "mov"])
def test_h264_roundtrip_flat_colour(tmp_path, ext):
    colours = np.array([RED, (30, 200, 90), (128, 128, 128), (10, 20, 240)], np.uint8)
    frames = np.broadcast_to(colours[np.arange(30) % 4][:, None, None], (30, 48, 64, 3)).copy()
    path = tmp_path / f"flat.{ext}"
    write_video(path, frames, fps=24, quality=10)

    info = probe(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (30, 24.0, 64, 48)
    assert info.duration == pytest.approx(30 / 24, abs=0.01)
    assert info.codec == "h264"
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 3


def test_gif_roundtrip_keeps_flat_colours(tmp_path):
    frames = np.zeros((12, 45, 31, 3), np.uint8)  # odd sizes are fine for GIF
    for k in range(12):
        frames[k, :, : 2 + 2 * k] = RED  # a growing red bar on black
    path = tmp_path / "bar.gif"
    write_video(path, frames, fps=10)

    info = probe(path)
    assert (info.num_frames, info.width, info.height, info.codec) == (12, 31, 45, "gif")
    assert info.fps == pytest.approx(10, abs=0.1)
    back = read_video(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).max() <= 10


def test_gif_fps_not_a_whole_number_of_centiseconds(tmp_path):
    path = tmp_path / "g24.gif"
    write_video(path, (index_frame(k) for k in range(48)), fps=24)
    info = probe(path)
    assert info.num_frames == 48 and info.fps == pytest.approx(24, abs=0.1)
    assert indices(read_video(path, fps=8)) == list(range(0, 48, 3))
    assert indices(read_video(path, start=1.0, num_frames=3)) == [24, 25, 26]


def test_writer_accepts_torch_and_batches(tmp_path):
    path = tmp_path / "t.mp4"
    batch = torch.full((5, 32, 32, 3), 100, dtype=torch.uint8)
    with VideoWriter(path, fps=12, quality=10) as w:
        w.write(batch)  # (T, H, W, 3) tensor
        w.write(batch[0])  # (H, W, 3) tensor
        w.write(np.full((32, 32, 3), 100, np.uint8))
        assert w.frames_written == 7
    back = read_video(path)
    assert back.shape == (7, 32, 32, 3) and np.abs(back.astype(int) - 100).max() <= 3


def test_streaming_writer_long_video(tmp_path):
    path = tmp_path / "long.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(path, fps=24, quality=20) as w:
        for k in range(300):
            noise = rng.integers(0, 256, (128, 80, 3), dtype=np.uint8)  # incompressible: ~7 KB a frame
            w.write(np.concatenate([noise, index_frame(k)]))  # (144, 80, 3)
        # Packets reach the file as they are encoded; nothing is held back until close.
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".long.mp4")]
        assert len(partial) == 1 and not path.exists()
        written_before_close = partial[0].stat().st_size
    # Only x264's lookahead (~40 frames) and the file buffer (256 KB) are still pending at close.
    assert written_before_close > 0.6 * path.stat().st_size
    assert probe(path).num_frames == 300
    assert [p.name for p in tmp_path.iterdir()] == ["long.mp4"]

    def read(**kw) -> list[int]:
        return indices(read_video(path, **kw)[:, 128:])

    # x264 puts a second keyframe near frame 250: start=11.0 (frame 264) seeks there, decodes forward.
    assert read(start=11.0, num_frames=3) == [264, 265, 266]
    assert read(start=10.3, end=10.5) == [247, 248, 249, 250, 251]
    assert read(start=12.4) == list(range(297, 300))


# ------------------------------------------------------------------------------------ resampling and clips


def test_native_frames(indexed_mp4):
    assert indices(read_video(indexed_mp4)) == list(range(48))


def test_fps_downsample_picks_every_third(indexed_mp4):
    assert indices(read_video(indexed_mp4, fps=8)) == list(range(0, 48, 3))


def test_fps_upsample_duplicates(indexed_mp4):
    assert indices(read_video(indexed_mp4, fps=48)) == [k // 2 for k in range(96)]


def test_fps_non_integer_ratio(indexed_mp4):
    # Output frame k is the last source frame at or before k / 10 s: floor(k * 2.4).
    assert indices(read_video(indexed_mp4, fps=10)) == [k * 24 // 10 for k in range(20)]


def test_duplicates_are_independent_arrays(indexed_mp4):
    a, b = list(iter_frames(indexed_mp4, start=0.25, fps=48, num_frames=2))  # frame 6, twice
    a[:] = 0
    assert b.max() == 255


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"start": 0.5}, list(range(12, 48))),
        ({"start": 0.52}, list(range(12, 48))),  # frame 12 (t=0.5) is on screen at 0.52
        ({"start": 0.5, "end": 1.0}, list(range(12, 24))),
        ({"end": 0.25}, list(range(6))),
        ({"start": 0.5, "num_frames": 5}, [12, 13, 14, 15, 16]),
        ({"num_frames": 3}, [0, 1, 2]),
        ({"start": 0.5, "fps": 8}, list(range(12, 48, 3))),
        ({"start": 0.5, "end": 1.0, "fps": 4}, [12, 18]),
        ({"start": 1.99}, [47]),  # the last frame is on screen until 2.0 s
        ({"start": 1.9, "fps": 48}, [45, 46, 46, 47, 47]),
    ],
)
def test_clip_selection(indexed_mp4, kwargs, expected):
    assert indices(iter_frames(indexed_mp4, **kwargs)) == expected


class _OvershootingContainer:
    """Fake demuxer whose seek lands on the first keyframe *after* the target (as dts-indexed ones can)."""

    keyframes = (0, 24)

    def __init__(self) -> None:
        self.pos = 0
        self.seeks: list[int] = []

    def seek(self, ts: int, stream=None) -> None:
        self.seeks.append(ts)
        self.pos = next((k for k in self.keyframes if k >= ts), 0)

    def demux(self, stream):
        for k in range(self.pos, 48):
            frame = SimpleNamespace(pts=k, duration=1)
            yield SimpleNamespace(decode=lambda f=frame: [f])


def test_seek_overshoot_falls_back_to_an_earlier_keyframe():
    stream = SimpleNamespace(time_base=Fraction(1, 24), start_time=0, average_rate=24)
    container = _OvershootingContainer()
    timed = _timed_frames(container, stream, "fake.mp4", start=0.5, eps=1e-3)
    times = [t for t, _, _ in timed]
    assert container.seeks == [12, 0]  # start, then start - 1 s (clamped to 0)
    assert times[0] == 0 and len(times) == 48


def test_selection_past_the_end(indexed_mp4):
    assert list(iter_frames(indexed_mp4, start=5.0)) == []
    assert list(iter_frames(indexed_mp4, num_frames=0)) == []
    with pytest.raises(UserError) as e:
        read_video(indexed_mp4, start=5.0)
    assert "no frames" in one_line_user_error(e)


# ------------------------------------------------------------------------------------------------ resizing


@pytest.fixture(scope="module")
def three_band_mp4(tmp_path_factory) -> Path:
    """(32, 64) frames: red left edge band, green centre, blue right edge band."""
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:, :10] = (255, 0, 0)
    frame[:, 10:54] = (0, 255, 0)
    frame[:, 54:] = (0, 0, 255)
    path = tmp_path_factory.mktemp("vid") / "bands.mp4"
    write_video(path, [frame] * 3, fps=24, quality=10)
    return path


def test_resize_crop_keeps_centre(three_band_mp4):
    out = read_video(three_band_mp4, size=(16, 16), resize="crop")
    assert out.shape == (3, 16, 16, 3)
    # Scaled to (16, 32) and centre-cropped to 16 wide (source columns 16..48): only green remains.
    assert out[..., 1].min() > 200 and out[..., 0].max() < 40 and out[..., 2].max() < 40


def test_resize_stretch(three_band_mp4):
    out = read_video(three_band_mp4, size=(20, 30), resize="stretch")
    assert out.shape == (3, 20, 30, 3)
    assert out[:, :, 2, 0].min() > 200 and out[:, :, -3, 2].min() > 200  # red left, blue right


def test_resize_pad(three_band_mp4):
    out = read_video(three_band_mp4, size=(64, 64), resize="pad")
    assert out.shape == (3, 64, 64, 3)
    assert out[:, :16].max() == 0 and out[:, 48:].max() == 0  # black bars above and below
    assert out[:, 20:44, 2, 0].min() > 200 and out[:, 20:44, 32, 1].min() > 200


def test_resize_upscale_crop(three_band_mp4):
    out = read_video(three_band_mp4, size=(48, 40))  # crop is the default
    assert out.shape == (3, 48, 40, 3)
    assert out[:, :, 20, 1].min() > 200


# --------------------------------------------------------------------------------------- atomic writing


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(path, fps=24) as w:
        w.write(np.zeros((3, 32, 32, 3), np.uint8))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "out.gif"
    write_video(path, np.zeros((2, 8, 8, 3), np.uint8), fps=5)
    before = path.read_bytes()
    with pytest.raises(KeyError), VideoWriter(path, fps=24) as w:
        w.write(np.full((4, 8, 8, 3), 255, np.uint8))
        raise KeyError("boom")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.gif"]


def test_non_atomic_writes_in_place(tmp_path):
    path = tmp_path / "direct.mkv"
    with VideoWriter(path, fps=24, atomic=False) as w:
        w.write(np.zeros((2, 16, 16, 3), np.uint8))
        assert path.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert probe(path).num_frames == 2


def test_unclosed_writer_leaves_no_temp_file(tmp_path):
    w = VideoWriter(tmp_path / "x.mp4", fps=24)
    w.write(np.zeros((16, 16, 3), np.uint8))
    del w
    assert list(tmp_path.iterdir()) == []


def test_close_is_idempotent(tmp_path):
    w = VideoWriter(tmp_path / "x.mp4", fps=30000 / 1001)
    w.write(np.zeros((2, 16, 16, 3), np.uint8))
    w.close()
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.write(np.zeros((16, 16, 3), np.uint8))
    assert probe(tmp_path / "x.mp4").fps == pytest.approx(29.97, abs=1e-3)


def test_no_frames_written_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], fps=24)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- tensor conversions


def test_tensor_conversions_roundtrip_exactly():
    u8 = np.arange(256, dtype=np.uint8).repeat(6).reshape(4, 4, 32, 3)  # every value, (T, H, W, 3)
    x = from_uint8_frames(u8)
    assert x.dtype == torch.float32 and x.shape == (3, 4, 4, 32)
    assert x.min() == -1 and x.max() == 1
    assert np.array_equal(to_uint8_frames(x), u8)
    assert np.array_equal(to_uint8_frames(x[None]), u8)  # (1, C, T, H, W)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 5, 1, 1).expand(3, 5, 1, 1)
    assert to_uint8_frames(x)[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]


def test_tensor_conversion_bad_shapes():
    with pytest.raises(UserError):
        to_uint8_frames(torch.zeros(2, 3, 4, 8, 8))
    with pytest.raises(UserError):
        from_uint8_frames(np.zeros((4, 8, 8, 3), np.float32))


# ------------------------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    for fn in (probe, read_video, iter_frames):
        with pytest.raises(UserError) as e:
            fn(missing)
        assert "not found" in one_line_user_error(e)


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 10)
    for fn in (probe, read_video):
        with pytest.raises(UserError) as e:
            fn(path)
        assert "notes.mp4" in one_line_user_error(e)


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(UserError):
        probe(tmp_path)


def test_audio_only_file(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*s.encode(frame), *s.encode(None)]:
            c.mux(packet)
    with pytest.raises(UserError, match="no video stream"):
        probe(path)


def _read_or_user_error(path: Path) -> np.ndarray | None:
    try:
        return read_video(path)
    except UserError as e:
        assert "\n" not in str(e)
        return None


def test_truncated_mp4(tmp_path, indexed_mp4):
    data = indexed_mp4.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: unreadable
    frames = _read_or_user_error(path)
    assert frames is None or indices(frames) == list(range(len(frames)))


def test_truncated_faststart_mp4_reads_a_prefix(tmp_path):
    # moov first (as from `ffmpeg -movflags +faststart`): the decodable prefix comes back.
    full = tmp_path / "fast.mp4"
    with av.open(str(full), "w", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=24, options={"crf": "10"})
        s.width, s.height, s.pix_fmt = 80, 16, "yuv420p"
        rng = np.random.default_rng(0)
        for k in range(48):
            frame = index_frame(k)
            frame[:4] = rng.integers(0, 256, (4, 80, 3), dtype=np.uint8)  # noise: make frames big
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    data = full.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])
    frames = _read_or_user_error(path)
    assert frames is not None and 0 < len(frames) < 48
    assert indices(frames) == list(range(len(frames)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fps": 0},
        {"fps": -5},
        {"fps": float("nan")},
        {"start": -1},
        {"start": 1.0, "end": 0.5},
        {"num_frames": -1},
        {"num_frames": 2.5},
        {"size": (0, 16)},
        {"size": (16,)},
        {"size": (16, -4)},
        {"resize": "zoom"},
    ],
)
def test_bad_read_arguments(indexed_mp4, kwargs):
    with pytest.raises(UserError) as e:
        iter_frames(indexed_mp4, **kwargs)  # raised at the call, before iterating
    one_line_user_error(e)


def test_odd_size_for_h264(tmp_path):
    with pytest.raises(UserError) as e:
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8), fps=24)
    assert "even" in one_line_user_error(e)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("x.avi", {}, "extension"),
        ("x", {}, "extension"),
        ("x.mp4", {"fps": 0}, "fps"),
        ("x.mp4", {"quality": 52}, "quality"),
        ("x.mp4", {"quality": -1}, "quality"),
        ("x.mp4", {"codec": "no-such-codec"}, "encoder"),
        ("x.gif", {"codec": "libx264"}, "gif"),
    ],
)
def test_bad_writer_arguments(tmp_path, name, kwargs, match):
    kwargs = {"fps": 24, **kwargs}
    with pytest.raises(UserError, match=match) as e:
        VideoWriter(tmp_path / name, **kwargs)
    one_line_user_error(e)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "x.mp4", fps=24)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(UserError, match="directory"):
        VideoWriter(tmp_path / "dir.mp4", fps=24)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError):
        VideoWriter(tmp_path / "file" / "x.mp4", fps=24)  # parent is a file


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        with pytest.raises(UserError, match="not writable"):
            VideoWriter(ro / "x.mp4", fps=24)
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((16, 16, 3), np.float32),
        np.zeros((16, 16), np.uint8),
        np.zeros((16, 16, 4), np.uint8),
        torch.zeros(16, 16, 3),
        [[0, 0, 0]],
    ],
)
def test_bad_frames(tmp_path, frame):
    with pytest.raises(UserError), VideoWriter(tmp_path / "x.mp4", fps=24) as w:
        w.write(frame)
    assert list(tmp_path.iterdir()) == []


def test_frame_size_change(tmp_path):
    with pytest.raises(UserError, match="differs"), VideoWriter(tmp_path / "x.mp4", fps=24) as w:
        w.write(np.zeros((16, 16, 3), np.uint8))
        w.write(np.zeros((16, 32, 3), np.uint8))


# ----------------------------------------------------------------------------- reproducible files (#21)


def _gradient(k: int, size: int) -> np.ndarray:
    """A scrolling colour gradient (size, size, 3): on AVX-512 CPUs, unpinned x264 wrote 97 64x64 ones
    differently almost every time (decoded frames off by up to 22 levels)."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    r, g = (ramp[None, :] + 4 * k) % 256, (ramp[:, None] + 2 * k) % 256
    b = np.full((size, size), (3 * k) % 256, np.float32)
    return np.stack(np.broadcast_arrays(r, g, b), axis=-1).astype(np.uint8)


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "count, size, ext, repeats", [(97, 64, "mp4", 6), (33, 256, "mp4", 2), (9, 32, "gif", 2)]
)
def test_the_same_frames_give_a_byte_identical_file(tmp_path, count, size, ext, repeats):
    frames = np.stack([_gradient(k, size) for k in range(count)])
    digests = set()
    for i in range(repeats):
        write_video(tmp_path / f"{i}.{ext}", frames, fps=8)
        digests.add(_digest(tmp_path / f"{i}.{ext}"))
    assert len(digests) == 1


def test_the_same_frames_give_the_same_file_in_another_process(tmp_path):
    """Another process (another heap, another start-up) writes the same bytes."""
    import subprocess
    import sys

    frames = np.stack([_gradient(k, 64) for k in range(49)])
    np.save(tmp_path / "frames.npy", frames)
    write_video(tmp_path / "here.mp4", frames, fps=8)
    there = tmp_path / "there.mp4"
    code = "import sys, numpy as np; from longvideo.data.video_io import write_video as w; "
    code += "w(sys.argv[1], np.load(sys.argv[2]), fps=8)"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code, str(there), str(tmp_path / "frames.npy")], env=env,
                   check=True, timeout=300)  # fmt: skip
    assert _digest(there) == _digest(tmp_path / "here.mp4")


def test_x264_settings_do_not_depend_on_the_machine(tmp_path):
    """A fixed count of frame threads (not one slice per core), and x264 held below AVX-512 where the CPU
    has it: the bitstream is then a function of the frames and settings alone."""
    from longvideo.data.video_io import write as w

    write_video(tmp_path / "a.mp4", np.stack([_gradient(k, 256) for k in range(9)]), fps=8)
    head = (tmp_path / "a.mp4").read_bytes()
    assert f" threads={w.X264_THREADS} ".encode() in head and b" sliced_threads=0 " in head
    opts = w.x264_options(18, "veryfast")
    assert opts["crf"] == "18" and opts["preset"] == "veryfast"
    assert opts.get("x264-params") == ("asm=AVX2" if w._has_avx512() else None)
