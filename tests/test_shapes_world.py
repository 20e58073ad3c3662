"""The shapes world follows DESIGN.md §4 exactly."""

import numpy as np
import pytest
import torch

from longvideo.data.shapes import (
    BACKGROUNDS,
    BOUNCE_SPEED,
    COLORS,
    FREE_TRAVEL,
    HELD_OUT,
    MOTIONS,
    SIZES,
    ShapeObject,
    ShapesConfig,
    ShapesVideo,
    free_travel_frames,
    parse_caption,
    sample_dataset,
    shape_mask,
)
from longvideo.errors import UserError

N = 400  # videos per property check: fast (sampling is ~0.1 ms a video)


@pytest.fixture(scope="module")
def videos():
    return sample_dataset(ShapesConfig(), N, seed=123)


def test_deterministic_by_seed_and_index():
    a = sample_dataset(ShapesConfig(), 20, seed=7)
    b = sample_dataset(ShapesConfig(), 20, seed=7)
    c = sample_dataset(ShapesConfig(), 20, seed=8)
    assert a == b
    assert a != c
    # video i does not depend on how many come before it: a shard starting at 10 draws the same videos
    assert sample_dataset(ShapesConfig(), 10, seed=7, offset=10) == a[10:]
    assert np.array_equal(a[3].render(17), b[3].render(17))


def test_world_rules_hold(videos):
    for v in videos:
        assert v.background in BACKGROUNDS and v.height == v.width == 64 and v.fps == 8
        assert len(v.objects) in (1, 2)
        colors = [o.color for o in v.objects]
        assert len(set(colors)) == len(colors), "two objects never share a color"
        assert v.background not in colors, "an object never has its background's color"
        for o in v.objects:
            assert (o.color, o.shape) not in HELD_OUT
            assert o.motion in MOTIONS and o.size in SIZES
            assert 0 <= o.x <= 64 - o.px and 0 <= o.y <= 64 - o.px
            if o.motion != "staying still":
                assert free_travel_frames(o, 64, 64) >= FREE_TRAVEL
        if len(v.objects) == 2:
            a, b = v.objects
            overlap = a.x < b.x + b.px and b.x < a.x + a.px and a.y < b.y + b.px and b.y < a.y + a.px
            assert not overlap, "two objects start apart"
    # every value of every attribute occurs
    objs = [o for v in videos for o in v.objects]
    assert {o.color for o in objs} == set(COLORS)
    assert {o.motion for o in objs} == set(MOTIONS)
    assert {v.background for v in videos} == set(BACKGROUNDS)
    assert {len(v.objects) for v in videos} == {1, 2}


def test_velocities_match_motion(videos):
    for o in (o for v in videos for o in v.objects):
        if o.motion == "staying still":
            assert (o.vx, o.vy) == (0, 0)
        elif o.motion == "bouncing around":
            assert abs(o.vx) == abs(o.vy) == BOUNCE_SPEED
        else:
            _, d, s = o.motion.split()
            speed = {"slowly": 1, "quickly": 2}[s]
            assert (o.vx, o.vy) == {
                "left": (-speed, 0),
                "right": (speed, 0),
                "up": (0, -speed),
                "down": (0, speed),
            }[d]


def test_reflection_off_walls_matches_step_simulation():
    obj = ShapeObject("square", "red", "large", "bouncing around", x=40, y=5, vx=2, vy=-2)
    pos = obj.positions(np.arange(200), 64, 64)
    # reference: step-by-step simulation with explicit bounces
    x, y, vx, vy, span = 40, 5, 2, -2, 64 - 18
    for t in range(200):
        assert tuple(pos[t]) == (x, y), t
        x, y = x + vx, y + vy
        if x < 0 or x > span:
            x, vx = (-x if x < 0 else 2 * span - x), -vx
        if y < 0 or y > span:
            y, vy = (-y if y < 0 else 2 * span - y), -vy
    assert pos.min() >= 0 and pos.max() <= span, "objects stay in view forever"


def test_any_length_and_streaming_equal_whole(videos):
    v = videos[0]
    whole = v.render(150)
    streamed = np.stack(list(v.iter_frames(150, chunk=64)))
    assert np.array_equal(whole, streamed)
    assert np.array_equal(v.render(10, start=140), whole[140:])
    late = v.render(1, start=10**6)  # a frame a million frames in: O(1)
    assert late.shape == (1, 64, 64, 3)


def test_render_exact_palette_and_shapes():
    obj = ShapeObject("triangle", "blue", "large", "staying still", x=10, y=20, vx=0, vy=0)
    v = ShapesVideo("gray", (obj,))
    f = v.render(1)[0]
    colors = {tuple(c) for c in f.reshape(-1, 3)}
    assert colors == {BACKGROUNDS["gray"], COLORS["blue"]}, "hard edges, exact RGB"
    m = (f == COLORS["blue"]).all(-1)
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 27, 20, 37), "base = height = size"
    # apex up: row widths grow from top to bottom
    widths = m[20:38, 10:28].sum(1)
    assert widths[0] == 2 and widths[-1] == 18 and np.all(np.diff(widths) >= 0)
    assert shape_mask("square", 10).all()
    circle = shape_mask("circle", 18)
    assert not circle[0, 0] and circle[9, 0] and circle[9, 9]
    assert abs(circle.mean() - np.pi / 4) < 0.03


def test_render_tensor_layout():
    v = sample_dataset(ShapesConfig(), 1, seed=0)[0]
    x = v.render_tensor(9)
    assert x.shape == (3, 9, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(
        ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0), torch.from_numpy(v.render(9))
    )


def test_held_out_only_and_include():
    ho = sample_dataset(ShapesConfig(include_held_out=True, held_out_only=True), 100, seed=1)
    assert all(any((o.color, o.shape) in HELD_OUT for o in v.objects) for v in ho)
    mixed = sample_dataset(ShapesConfig(include_held_out=True), 600, seed=1)
    pairs = {(o.color, o.shape) for v in mixed for o in v.objects}
    assert pairs >= HELD_OUT


def test_filters():
    cfg = ShapesConfig(colors=["red", "blue"], shapes=["circle"], num_objects=[1], motions=["staying still"])
    for v in sample_dataset(cfg, 50, seed=2):
        (o,) = v.objects
        assert o.color in ("red", "blue") and o.shape == "circle" and (o.vx, o.vy) == (0, 0)


@pytest.mark.parametrize(
    "cfg, msg",
    [
        (ShapesConfig(colors=["pink"]), "unknown color 'pink'"),
        (ShapesConfig(motions=["moving sideways"]), "unknown motion"),
        (ShapesConfig(num_objects=[3]), "num_objects"),
        (ShapesConfig(num_frames=0), "num_frames"),
        (ShapesConfig(colors=["purple"], shapes=["triangle"]), "no (color, shape) pair"),
        (ShapesConfig(height=30, width=30), "too small"),
    ],
)
def test_bad_config(cfg, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        cfg.validate()


def test_caption_grammar_round_trip(videos):
    for v in videos:
        cap = v.caption
        spec = parse_caption(cap)
        assert spec.text == cap
        assert spec.background == v.background
        assert [(o.size, o.color, o.shape, o.motion) for o in spec.objects] == [
            (o.size, o.color, o.shape, o.motion) for o in v.objects
        ]
    one = "a large red circle moving right quickly on a black background"
    two = "a small blue square staying still and a large yellow triangle bouncing around on a navy background"
    assert parse_caption(one).objects[0].direction == "right"
    assert parse_caption(one).objects[0].speed == "quickly"
    assert [o.shape for o in parse_caption(two).objects] == ["square", "triangle"]


@pytest.mark.parametrize(
    "text, msg",
    [
        ("a large pink circle moving right quickly on a black background", "unknown color 'pink'"),
        ("a large red hexagon staying still on a black background", "unknown shape"),
        ("a huge red circle staying still on a black background", "unknown size"),
        ("a large red circle moving sideways quickly on a black background", "unknown motion"),
        ("a large red circle staying still on a green background", "unknown background"),
        ("a red circle", "not a shapes-world caption"),
        (
            "a large red circle staying still and a large red square staying still on a black background",
            "share",
        ),
    ],
)
def test_caption_errors(text, msg):
    with pytest.raises(UserError, match=msg):
        parse_caption(text)
