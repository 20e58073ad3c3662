"""Tests for longvideo.data.manifest: bucket choice, clip cutting, fps resampling, images, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from longvideo.data import manifest as manifest_mod
from longvideo.data.manifest import ManifestConfig, ManifestDataset, assign_bucket
from longvideo.data.shapes import ShapesConfig
from longvideo.data.shapes_dataset import write_shapes_dataset
from longvideo.data.video_io import write_video
from longvideo.errors import UserError

FPS = 8
N_FRAMES = 40  # 5 s at 8 fps


def level(k: int) -> int:
    """Grey level of ramp frame k: flat frames survive H.264 within +-2, so k can be read back."""
    return 20 + 5 * k


def frame_indices(pixels: torch.Tensor) -> list[int]:
    """Ramp frame index of each frame of an item's pixels (3, T, H, W) in [-1, 1]."""
    grey = ((pixels + 1) * 127.5).mean(dim=(0, 2, 3))  # (T,)
    return [round((g - 20) / 5) for g in grey.tolist()]


def write_image(path: Path, rgb: np.ndarray, codec: str) -> None:
    """One uint8 (H, W, 3) image through FFmpeg's image2 muxer (png or mjpeg = jpg)."""
    with av.open(str(path), "w", format="image2") as c:
        stream = c.add_stream(codec, rate=1)
        stream.width, stream.height = rgb.shape[1], rgb.shape[0]
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj444p"
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=stream.pix_fmt)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """ramp.mp4: 40 frames, 8 fps, 32x48 (h x w), frame k flat grey level(k); wide.mp4: 16x64, 9 frames;
    thirds.png: 20x60 red | green | blue; broken.mp4: not a video."""
    d = tmp_path_factory.mktemp("media")
    ramp = np.stack([np.full((32, 48, 3), level(k), np.uint8) for k in range(N_FRAMES)])
    write_video(d / "ramp.mp4", ramp, fps=FPS, quality=10)
    write_video(d / "wide.mp4", np.zeros((9, 16, 64, 3), np.uint8), fps=FPS, quality=10)
    thirds = np.zeros((20, 60, 3), np.uint8)
    thirds[:, :20, 0] = thirds[:, 20:40, 1] = thirds[:, 40:, 2] = 255
    write_image(d / "thirds.png", thirds, "png")
    write_image(d / "thirds.jpg", thirds, "mjpeg")
    (d / "broken.mp4").write_bytes(b"this is not a video" * 10)
    return d


BUCKETS = [[1, 32, 48], [9, 32, 48], [17, 32, 48], [33, 32, 48], [5, 16, 64], [1, 16, 16], [1, 32, 32]]


def cfg(**kw) -> ManifestConfig:
    return ManifestConfig(**({"buckets": BUCKETS, "random_start": False} | kw))


def test_assign_bucket_nearest_aspect_then_most_frames():
    buckets = [[1, 64, 64], [17, 64, 64], [33, 64, 64], [17, 32, 64], [9, 64, 32], [17, 64, 32]]
    assert assign_bucket(40, 100, 100, buckets) == (33, 64, 64)
    assert assign_bucket(20, 100, 100, buckets) == (17, 64, 64)
    assert assign_bucket(3, 100, 100, buckets) == (1, 64, 64)  # a short video fills only the image bucket
    assert assign_bucket(40, 90, 200, buckets) == (17, 32, 64)  # wide: only the 1:2 bucket is near
    assert assign_bucket(16, 200, 100, buckets) == (9, 64, 32)  # tall; 17 frames do not fit
    assert assign_bucket(8, 200, 100, buckets) is None  # too short for every bucket of its aspect
    # equal ratio written two ways and equal frames: the one listed first wins
    assert assign_bucket(17, 10, 20, [[17, 16, 32], [17, 32, 64]]) == (17, 16, 32)
    # 2:1 and 1:2 are equally far from 1:1 (log ratio): first listed wins the tie
    assert assign_bucket(5, 50, 50, [[5, 32, 64], [5, 64, 32]]) == (5, 32, 64)


def test_config_validates_buckets_and_fps():
    with pytest.raises(UserError, match="4k\\+1"):
        ManifestDataset([], ManifestConfig(buckets=[[16, 32, 32]]))
    with pytest.raises(UserError, match="fps"):
        ManifestDataset([], ManifestConfig(fps=0))
    with pytest.raises(UserError, match="at least one"):
        ManifestDataset([], ManifestConfig(buckets=[]))


def test_native_fps_item_shape_range_and_content(media):
    ds = ManifestDataset([{"path": "ramp.mp4", "caption": "ramp"}], cfg(), root=media)
    assert ds.buckets == [(33, 32, 48)] and ds.bucket_of(0) == (33, 32, 48)
    item = ds[0]
    assert item["caption"] == "ramp" and item["bucket"] == (33, 32, 48)
    px = item["pixels"]
    assert px.dtype == torch.float32 and px.shape == (3, 33, 32, 48)
    assert px.min() >= -1 and px.max() <= 1
    assert frame_indices(px) == list(range(33))


@pytest.mark.parametrize(
    ("fps", "bucket", "step"),
    [(4, (17, 32, 48), 2.0), (16, (33, 32, 48), 0.5), (2, (9, 32, 48), 4.0)],
)
def test_fps_resampling_changes_frame_count(media, fps, bucket, step):
    # 5 s of video: 20 frames at 4 fps (-> 17), 80 at 16 fps (-> 33), 10 at 2 fps (-> 9)
    ds = ManifestDataset([{"path": "ramp.mp4", "caption": "c"}], cfg(fps=fps), root=media)
    assert ds.bucket_of(0) == bucket
    idx = frame_indices(ds[0]["pixels"])
    assert len(idx) == bucket[0]
    assert idx == [int(k * step) for k in range(bucket[0])]  # source frame on screen at k / fps


def test_resampled_count_includes_partial_last_interval(media):
    # 9 frames at 8 fps = 1.125 s; at 4 fps the reader gives the frames at 0, .25, .5, .75, 1.0 s
    ds = ManifestDataset([{"path": "wide.mp4", "caption": "c"}], cfg(fps=4), root=media)
    assert ds.bucket_of(0) == (5, 16, 64)
    assert ds[0]["pixels"].shape == (3, 5, 16, 64)


def test_start_end_range_and_fixed_start(media):
    rows = [{"path": "ramp.mp4", "caption": "c", "start": 1.0, "end": 3.5}]  # 2.5 s = 20 frames
    ds = ManifestDataset(rows, cfg(), root=media)
    assert ds.bucket_of(0) == (17, 32, 48)
    assert frame_indices(ds[0]["pixels"]) == list(range(8, 25))


def test_random_start_reproducible_and_inside_range(media):
    rows = [{"path": "ramp.mp4", "caption": "c", "start": 1.0, "end": 3.5}] * 3  # 20 frames, 17-frame clips
    ds = ManifestDataset(rows, cfg(random_start=True, seed=3), root=media)
    starts = {(i, e): ds.clip_start(i, e) for i in range(3) for e in range(4)}
    assert all(1.0 <= s <= 1.0 + 3 / FPS for s in starts.values())  # 3 frames of slack
    assert len(set(starts.values())) > 1  # items / epochs draw different starts
    again = ManifestDataset(rows, cfg(random_start=True, seed=3), root=media)
    assert starts == {(i, e): again.clip_start(i, e) for i in range(3) for e in range(4)}
    item, epoch = max(starts, key=starts.get)
    first = round(starts[item, epoch] * FPS)
    px = ds[(item, epoch)]["pixels"]
    assert frame_indices(px) == list(range(first, first + 17))
    assert torch.equal(px, again[(item, epoch)]["pixels"])
    assert torch.equal(ds[1]["pixels"], ds[(1, 0)]["pixels"])  # an int index is epoch 0


def test_resize_covers_and_centre_crops(media):
    ds = ManifestDataset([{"path": "thirds.png", "caption": "c"}], cfg(buckets=[[1, 16, 16]]), root=media)
    assert ds.bucket_of(0) == (1, 16, 16)
    px = ds[0]["pixels"]  # (3, 1, 16, 16): 20x60 -> 16x48 -> centre 16 columns = the green third
    assert px.shape == (3, 1, 16, 16)
    rgb = (px[:, 0] + 1) * 127.5  # (3, 16, 16)
    assert rgb[1].mean() > 200 and rgb[0].mean() < 40 and rgb[2].mean() < 40


def test_images_are_one_frame(media):
    rows = [{"path": "thirds.png", "caption": "png"}, {"path": str(media / "thirds.jpg"), "caption": "jpg"}]
    ds = ManifestDataset(rows, cfg(buckets=[[1, 32, 32], [17, 32, 32]]), root=media)
    assert ds.buckets == [(1, 32, 32), (1, 32, 32)]
    for i in range(2):
        assert ds[i]["pixels"].shape == (3, 1, 32, 32)


def test_manifest_file_keep_false_metadata_and_no_probe(media, monkeypatch):
    meta = {"fps": 8, "num_frames": 40, "height": 32, "width": 48}
    wide = {"fps": 8, "num_frames": 9, "height": 16, "width": 64}
    rows = [
        {"path": str(media / "ramp.mp4"), "caption": "a", **meta},  # absolute path
        {"path": "ramp.mp4", "caption": "rejected", "keep": False},
        {"path": "wide.mp4", "caption": "b", **wide},
    ]
    path = media / "manifest.jsonl"  # relative paths resolve against the manifest's folder
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")

    def no_probe(p):
        raise AssertionError("complete rows must not be probed")

    monkeypatch.setattr(manifest_mod, "probe", no_probe)
    ds = ManifestDataset(path, cfg())
    assert len(ds) == 2 and ds.buckets == [(33, 32, 48), (5, 16, 64)]
    assert [ds[i]["caption"] for i in range(2)] == ["a", "b"]


def test_shapes_dataset_manifest(tmp_path):
    write_shapes_dataset(tmp_path, 2, ShapesConfig(height=48, width=48, num_frames=9), seed=1, progress=False)
    ds = ManifestDataset(tmp_path / "manifest.jsonl", ManifestConfig(buckets=[[1, 32, 32], [9, 32, 32]]))
    assert len(ds) == 2 and ds.buckets == [(9, 32, 32)] * 2
    item = ds[1]
    assert item["pixels"].shape == (3, 9, 32, 32) and item["caption"].startswith("a ")


def test_short_rows_are_dropped(media):
    rows = [{"path": "wide.mp4", "caption": "c"}, {"path": "ramp.mp4", "caption": "c"}]
    ds = ManifestDataset(rows, cfg(buckets=[[17, 16, 64], [33, 32, 48]]), root=media)
    assert ds.buckets == [(33, 32, 48)]
    assert len(ds.dropped) == 1 and ds.dropped[0][0].endswith("wide.mp4")


def test_broken_file_raises_naming_it_or_is_skipped(media):
    rows = [{"path": "ramp.mp4", "caption": "ok"}, {"path": "broken.mp4", "caption": "bad"}]
    with pytest.raises(UserError, match=r"broken\.mp4") as e:
        ManifestDataset(rows, cfg(), root=media)
    assert "\n" not in str(e.value) and "row 2" in str(e.value)
    with pytest.raises(UserError, match=r"missing\.mp4"):
        ManifestDataset([{"path": "missing.mp4", "caption": "c"}], cfg(), root=media)

    ds = ManifestDataset([*rows, {"path": "missing.mp4", "caption": "c"}], cfg(skip_broken=True), root=media)
    assert len(ds) == 1 and ds[0]["caption"] == "ok"
    assert [Path(p).name for p, _ in ds.dropped] == ["broken.mp4", "missing.mp4"]


def test_broken_file_with_metadata_fails_when_read(media):
    row = {"path": "broken.mp4", "caption": "c", "num_frames": 9, "fps": 8, "height": 32, "width": 48}
    ds = ManifestDataset([row], cfg(), root=media)  # metadata complete: no file access yet
    with pytest.raises(UserError, match=r"broken\.mp4") as e:
        ds[0]
    assert "\n" not in str(e.value)
    assert len(ManifestDataset([row], cfg(skip_broken=True), root=media)) == 0


def test_bad_rows_are_user_errors(media, tmp_path):
    bad = tmp_path / "manifest.jsonl"
    bad.write_text('{"path": "a.mp4", "caption": "c"}\n{not json\n')
    with pytest.raises(UserError, match="line 2"):
        ManifestDataset(bad, cfg())
    with pytest.raises(UserError, match="caption"):
        ManifestDataset([{"path": "ramp.mp4"}], cfg(), root=media)
    with pytest.raises(UserError, match="'fps' must be"):
        ManifestDataset([{"path": "ramp.mp4", "caption": "c", "fps": -1}], cfg(), root=media)
    with pytest.raises(UserError, match="end"):
        ManifestDataset([{"path": "ramp.mp4", "caption": "c", "start": 2, "end": 1}], cfg(), root=media)
