"""The shapes evaluator is right on the world's own renders, and rejects wrong captions."""

import dataclasses

import numpy as np
import pytest

from longvideo.data.shapes import (
    BACKGROUNDS,
    COLORS,
    MOTIONS,
    SHAPES,
    ShapeObject,
    ShapesConfig,
    ShapesVideo,
    sample_dataset,
)
from longvideo.data.video_io import read_video, write_video
from longvideo.eval.shapes import ShapesEvalConfig, evaluate, summarise

RNG = np.random.default_rng(0)


def _wrong_caption(v: ShapesVideo, k: int) -> str:
    """The true caption with one attribute of one object (or the background) changed."""
    objs = list(v.objects)
    i = k % len(objs)
    o = objs[i]
    field = ("color", "shape", "size", "motion", "background")[k % 5]
    if field == "background":
        bgs = [b for b in BACKGROUNDS if b != v.background and b not in {x.color for x in objs}]
        return dataclasses.replace(v, background=bgs[k % len(bgs)]).caption
    if field == "color":
        new = [c for c in COLORS if c not in {x.color for x in objs} and c != v.background][k % 3]
    elif field == "shape":
        new = [s for s in SHAPES if s != o.shape][k % 2]
    elif field == "size":
        new = "small" if o.size == "large" else "large"
    else:
        new = [m for m in MOTIONS if m != o.motion][k % 9]
    objs[i] = dataclasses.replace(o, **{field: new})
    return dataclasses.replace(v, objects=tuple(objs)).caption


@pytest.fixture(scope="module")
def single_mp4(tmp_path_factory):
    """120 single-object videos through H.264 (yuv420p, CRF 10): what `data shapes` writes."""
    cfg = ShapesConfig(num_objects=[1], include_held_out=True)
    videos = sample_dataset(cfg, 120, seed=2024)
    d = tmp_path_factory.mktemp("eval")
    out = []
    for i, v in enumerate(videos):
        p = d / f"{i}.mp4"
        write_video(p, v.render(33), v.fps, quality=10)
        out.append((v, read_video(p)))
    return out


def test_single_object_mp4_judged_correct(single_mp4):
    results = [evaluate(frames, v.caption) for v, frames in single_mp4]
    s = summarise(results)
    assert s["correct"] >= 0.97, s
    assert s["all"]["present"] == 1.0 and s["all"]["found"] == 1.0
    assert s["background"] == 1.0
    # breakdowns: [rate, count] per expected shape and per pace ("slowly", "quickly", "around", "still")
    assert sum(n for _, n in s["shape_by_expected"].values()) == s["all"]["objects"]
    assert set(s["shape_by_expected"]) == {"circle", "square", "triangle"}
    assert all(r >= 0.9 for r, _ in s["motion_by_expected"].values()), s["motion_by_expected"]


def test_wrong_captions_rejected(single_mp4):
    rejected = [
        not evaluate(frames, _wrong_caption(v, k))["correct"] for k, (v, frames) in enumerate(single_mp4)
    ]
    assert np.mean(rejected) >= 0.97


def test_two_objects_in_memory():
    videos = sample_dataset(ShapesConfig(num_objects=[2], include_held_out=True), 60, seed=99)
    s = summarise([evaluate(v.render(33), v.caption) for v in videos])
    assert s["correct"] >= 0.95, s
    assert s["all"]["present"] >= 0.98  # crossings are occlusions, not disappearances


def test_detection_values():
    obj = ShapeObject("circle", "green", "large", "moving right quickly", x=4, y=20, vx=2, vy=0)
    v = ShapesVideo("navy", (obj,))
    det = evaluate(v.render(33))  # no caption: detection only
    assert det["background"] == "navy" and det["background_drift"] == 0
    (o,) = det["objects"]
    assert (o["color"], o["shape"], o["size"], o["motion"]) == (
        "green",
        "circle",
        "large",
        "moving right quickly",
    )
    assert o["speed"] == [2.0, 0.0] and o["present_frac"] == 1.0 and o["size_px"] == 18


def test_vanishing_object_and_drift_are_reported():
    obj = ShapeObject("square", "red", "small", "staying still", x=30, y=30, vx=0, vy=0)
    v = ShapesVideo("black", (obj,))
    frames = v.render(40)
    frames[25:] = 0  # the object vanishes after frame 25
    r = evaluate(frames, v.caption)
    assert not r["correct"] and not r["objects"][0]["ok"]["present"]
    assert r["objects"][0]["detected"]["present_frac"] == pytest.approx(25 / 40)
    assert "present_timeline" not in r["objects"][0]["detected"]
    r = evaluate(frames, v.caption, ShapesEvalConfig(timeline=10))  # spans 0-9, 10-19, 20-29, 30-39
    assert r["objects"][0]["detected"]["present_timeline"] == [1.0, 1.0, 0.5, 0.0]
    det = evaluate(frames[:35], None, ShapesEvalConfig(timeline=30))  # a short last span
    assert det["objects"][0]["present_timeline"] == [round(25 / 30, 3), 0.0]
    frames = v.render(40).astype(np.int16)
    frames[..., :] += np.linspace(0, 30, 40).astype(np.int16)[:, None, None, None]  # brightening background
    det = evaluate(np.clip(frames, 0, 255).astype(np.uint8))
    assert det["background_drift"] == pytest.approx(30, abs=0.5)


def test_extra_object_makes_caption_wrong():
    a = ShapeObject("square", "red", "small", "staying still", x=5, y=5, vx=0, vy=0)
    b = ShapeObject("circle", "blue", "large", "staying still", x=40, y=40, vx=0, vy=0)
    two = ShapesVideo("black", (a, b))
    r = evaluate(two.render(9), ShapesVideo("black", (a,)).caption)
    assert not r["correct"] and [o["color"] for o in r["extra_objects"]] == ["blue"]
    assert evaluate(two.render(9), two.caption)["correct"]


def test_a_recoloured_object_does_not_occlude_itself():
    """An object drawn in another colour for a while (a generator's colour drift) is absent in those frames:
    only the caption's own objects may hide it. Without a caption any colour may (crossings of unknowns)."""
    obj = ShapeObject("square", "red", "small", "staying still", x=30, y=30, vx=0, vy=0)
    v = ShapesVideo("black", (obj,))
    frames = v.render(40)
    red = (frames[10:30] == np.array(COLORS["red"], dtype=np.uint8)).all(-1)  # (20, H, W)
    frames[10:30][red] = COLORS["blue"]  # frames 10-29: the same square, blue
    r = evaluate(frames, v.caption)
    d = r["objects"][0]["detected"]
    assert d["present_frac"] == pytest.approx(0.5) and d["persist_frac"] == pytest.approx(0.5)
    assert not r["objects"][0]["ok"]["present"]
    det = evaluate(frames)
    red_det = next(o for o in det["objects"] if o["color"] == "red")
    assert red_det["persist_frac"] == pytest.approx(1.0)  # no caption: the blue box may hide it
