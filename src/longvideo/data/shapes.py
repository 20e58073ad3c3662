"""The shapes world: a procedural video domain whose every video can be checked by a program.

DESIGN.md §4 is the specification. A video is fully described by a `ShapesVideo` (background + one or two
`ShapeObject`s); positions at any frame come from a closed form (a triangle wave), so any frame of a video of
any length renders in O(1) and a long video can be streamed frame by frame.

Coordinates: an object's position is the integer top-left corner (x, y) of its size x size box; it moves in
[0, W - size] x [0, H - size]. "Wall contact" is the box touching the canvas edge. Speeds are integers and
walls reflect, so positions stay integers and rendering is exact (hard edges, exact palette RGB).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from longvideo.errors import UserError

# ----------------------------------------------------------------------------- the world's vocabulary

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "navy": (20, 30, 80),
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 10, "large": 18}
# Direction name -> (dx, dy) unit vector; speed name -> px/frame. "bouncing" draws its diagonal when sampled.
MOVES: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS: dict[str, int] = {"slowly": 1, "quickly": 2}
BOUNCE_SPEED = 2  # px/frame on each axis, 45 degrees
MOTIONS: tuple[str, ...] = (
    *(f"moving {d} {s}" for d in MOVES for s in SPEEDS),
    "bouncing around",
    "staying still",
)
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("orange", "circle"), ("green", "square")}
)
FREE_TRAVEL = 12  # frames of motion guaranteed before the first wall contact


# ----------------------------------------------------------------------------- configuration


@dataclass
class ShapesConfig:
    """What to sample from the world. Empty lists mean "all"; names are validated by `validate`."""

    height: int = 64
    width: int = 64
    fps: float = 8.0
    num_frames: int = 33
    num_objects: list[int] = field(default_factory=lambda: [1, 2])
    backgrounds: list[str] = field(default_factory=list)
    colors: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    sizes: list[str] = field(default_factory=list)
    motions: list[str] = field(default_factory=list)
    include_held_out: bool = False  # allow the held-out (color, shape) pairs
    held_out_only: bool = False  # every video has at least one held-out pair (for composition tests)

    def validate(self) -> ShapesConfig:
        _check_names("background", self.backgrounds, BACKGROUNDS)
        _check_names("color", self.colors, COLORS)
        _check_names("shape", self.shapes, SHAPES)
        _check_names("size", self.sizes, SIZES)
        _check_names("motion", self.motions, MOTIONS)
        if not self.num_objects or any(n not in (1, 2) for n in self.num_objects):
            raise UserError(f"num_objects must be a non-empty subset of [1, 2], got {list(self.num_objects)}")
        if self.num_frames < 1:
            raise UserError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps <= 0:
            raise UserError(f"fps must be > 0, got {self.fps}")
        if self.held_out_only and not self.include_held_out:
            raise UserError("held_out_only needs include_held_out")
        big = max(SIZES[s] for s in (self.sizes or SIZES))
        # A quick mover must fit FREE_TRAVEL frames of travel on the canvas.
        if min(self.height, self.width) < big + FREE_TRAVEL * BOUNCE_SPEED + 1:
            raise UserError(
                f"canvas {self.height}x{self.width} too small for {big}px objects (min {big + 25})"
            )
        if not self.pairs():
            raise UserError("no (color, shape) pair is left by these filters")
        return self

    def pairs(self) -> list[tuple[str, str]]:
        """Allowed (color, shape) pairs after filters and the held-out rule."""
        pairs = [(c, s) for c in (self.colors or COLORS) for s in (self.shapes or SHAPES)]
        if not self.include_held_out:
            pairs = [p for p in pairs if p not in HELD_OUT]
        return pairs


def _check_names(kind: str, names: Sequence[str], allowed) -> None:
    for n in names:
        if n not in allowed:
            raise UserError(f"unknown {kind} {n!r} (choose from: {', '.join(allowed)})")


# ----------------------------------------------------------------------------- one video's description


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str  # "small" | "large"
    motion: str  # one of MOTIONS
    x: int  # top-left at frame 0
    y: int
    vx: int  # px/frame at frame 0 (sign = direction)
    vy: int

    @property
    def px(self) -> int:
        return SIZES[self.size]

    def positions(self, t: np.ndarray, height: int, width: int) -> np.ndarray:
        """Top-left corners at frames `t` (any int array, any length): (len(t), 2) as (x, y)."""
        return np.stack(
            [
                _reflect(self.x + self.vx * t, width - self.px),
                _reflect(self.y + self.vy * t, height - self.px),
            ],
            axis=-1,
        )

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} {self.motion}"


def _reflect(p: np.ndarray, span: int) -> np.ndarray:
    """Unbounded coordinate -> position bouncing inside [0, span] (a triangle wave of period 2*span)."""
    if span == 0:
        return np.zeros_like(p)
    q = np.mod(p, 2 * span)
    return np.where(q > span, 2 * span - q, q)


@dataclass(frozen=True)
class ShapesVideo:
    background: str
    objects: tuple[ShapeObject, ...]
    height: int = 64
    width: int = 64
    fps: float = 8.0

    @property
    def caption(self) -> str:
        return f"{' and '.join(o.phrase() for o in self.objects)} on a {self.background} background"

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "objects": [asdict(o) for o in self.objects],
            "height": self.height,
            "width": self.width,
            "fps": self.fps,
        }

    @staticmethod
    def from_dict(d: dict) -> ShapesVideo:
        names = [f.name for f in fields(ShapeObject)]  # manifest rows carry extra keys (held_out)
        objs = tuple(ShapeObject(**{k: o[k] for k in names}) for o in d["objects"])
        return ShapesVideo(d["background"], objs, d.get("height", 64), d.get("width", 64), d.get("fps", 8.0))

    # ------------------------------------------------------------------------- rendering

    def render(self, num_frames: int, start: int = 0) -> np.ndarray:
        """Frames [start, start + num_frames) as uint8 RGB (T, H, W, 3)."""
        out = np.empty((num_frames, self.height, self.width, 3), np.uint8)
        out[:] = BACKGROUNDS[self.background]
        t = np.arange(start, start + num_frames)
        for obj in self.objects:  # later objects are drawn on top where two cross
            mask = shape_mask(obj.shape, obj.px)  # (s, s) bool
            color = np.array(COLORS[obj.color], np.uint8)
            for i, (x, y) in enumerate(obj.positions(t, self.height, self.width)):
                region = out[i, y : y + obj.px, x : x + obj.px]  # (s, s, 3) view
                region[mask] = color
        return out

    def iter_frames(self, num_frames: int, chunk: int = 64) -> Iterator[np.ndarray]:
        """Stream (H, W, 3) frames of a video of any length in bounded memory."""
        for s in range(0, num_frames, chunk):
            yield from self.render(min(chunk, num_frames - s), start=s)

    def render_tensor(self, num_frames: int, start: int = 0) -> torch.Tensor:
        """(C, T, H, W) float32 in [-1, 1]: the training layout, no compression loss."""
        frames = torch.from_numpy(self.render(num_frames, start))  # (T, H, W, C) uint8
        return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask, sampled at pixel centres."""
    c = np.arange(size) + 0.5  # pixel centres
    yy, xx = np.meshgrid(c, c, indexing="ij")
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        r = size / 2
        return (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    if shape == "triangle":
        # Isosceles, apex up, base = height = size: the half-width at a row's lower edge grows linearly to
        # size/2, so the top row holds the 2-px apex and the bottom row the full base.
        return np.abs(xx - size / 2) <= (yy + 0.5) / 2
    raise UserError(f"unknown shape {shape!r} (choose from: {', '.join(SHAPES)})")


# ----------------------------------------------------------------------------- sampling


def sample_video(cfg: ShapesConfig, rng: np.random.Generator) -> ShapesVideo:
    """Draw one video. Rejection-samples object placement until the world's rules hold."""
    n = int(rng.choice(cfg.num_objects))
    backgrounds = list(cfg.backgrounds or BACKGROUNDS)
    for _ in range(1000):
        bg = backgrounds[rng.integers(len(backgrounds))]
        pairs = [p for p in cfg.pairs() if p[0] != bg]  # an object never has its background's color
        firsts = [p for p in pairs if p in HELD_OUT] if cfg.held_out_only else pairs
        if not firsts:
            continue
        chosen = [firsts[rng.integers(len(firsts))]]
        if n == 2:
            rest = [p for p in pairs if p[0] != chosen[0][0]]  # two objects never share a color
            if not rest:
                continue
            chosen.append(rest[rng.integers(len(rest))])
        objs: list[ShapeObject] = []
        for color, shape in chosen:
            obj = _place(cfg, rng, color, shape, objs)
            if obj is None:
                break
            objs.append(obj)
        if len(objs) == n:
            order = rng.permutation(n)  # the held-out object is not always first
            return ShapesVideo(bg, tuple(objs[i] for i in order), cfg.height, cfg.width, cfg.fps)
    raise UserError("could not sample a video satisfying these filters")


def _place(cfg: ShapesConfig, rng, color: str, shape: str, others: list[ShapeObject]) -> ShapeObject | None:
    sizes = list(cfg.sizes or SIZES)
    motions = list(cfg.motions or MOTIONS)
    size = sizes[rng.integers(len(sizes))]
    motion = motions[rng.integers(len(motions))]
    s = SIZES[size]
    if motion == "staying still":
        vx = vy = 0
    elif motion == "bouncing around":
        vx, vy = (int(v) * BOUNCE_SPEED for v in rng.choice([-1, 1], size=2))
    else:
        _, d, sp = motion.split()
        vx, vy = (c * SPEEDS[sp] for c in MOVES[d])
    # Free travel: the leading edge needs FREE_TRAVEL * |v| px before the wall on each moving axis.
    xlo, xhi = _free_range(vx, cfg.width - s)
    ylo, yhi = _free_range(vy, cfg.height - s)
    for _ in range(100):
        x, y = int(rng.integers(xlo, xhi + 1)), int(rng.integers(ylo, yhi + 1))
        if all(not _overlap(x, y, s, o.x, o.y, o.px) for o in others):
            return ShapeObject(shape, color, size, motion, x, y, vx, vy)
    return None


def _free_range(v: int, span: int) -> tuple[int, int]:
    need = FREE_TRAVEL * abs(v)
    return (need, span) if v < 0 else (0, span - need)


def _overlap(x0, y0, s0, x1, y1, s1) -> bool:
    return x0 < x1 + s1 and x1 < x0 + s0 and y0 < y1 + s1 and y1 < y0 + s0


def video_rng(seed: int, index: int) -> np.random.Generator:
    """Video `index` of the dataset drawn with `seed`; independent of other indices (parallel, resume)."""
    return np.random.default_rng([seed, index])


def sample_dataset(cfg: ShapesConfig, n: int, seed: int = 0, offset: int = 0) -> list[ShapesVideo]:
    cfg.validate()
    return [sample_video(cfg, video_rng(seed, offset + i)) for i in range(n)]


# ----------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object (no positions)."""

    size: str
    color: str
    shape: str
    motion: str

    @property
    def direction(self) -> str | None:
        return self.motion.split()[1] if self.motion.startswith("moving") else None

    @property
    def speed(self) -> str | None:
        return self.motion.split()[2] if self.motion.startswith("moving") else None


@dataclass(frozen=True)
class CaptionSpec:
    background: str
    objects: tuple[ObjectSpec, ...]

    @property
    def text(self) -> str:
        phrases = " and ".join(f"a {o.size} {o.color} {o.shape} {o.motion}" for o in self.objects)
        return f"{phrases} on a {self.background} background"


def parse_caption(text: str) -> CaptionSpec:
    """Inverse of `ShapesVideo.caption`; a caption outside the world's grammar raises UserError."""
    words = text.strip().lower().rstrip(".").split()
    if len(words) < 6 or words[-4:-2] != ["on", "a"] or words[-1] != "background":
        raise UserError(f"not a shapes-world caption (expected '... on a <background> background'): {text!r}")
    bg = words[-2]
    _check_names("background", [bg], BACKGROUNDS)
    # "and" never occurs inside an object phrase, so it separates them.
    phrases = [p.split() for p in " ".join(words[:-4]).split(" and ")]
    if len(phrases) > 2:
        raise UserError(f"the shapes world has one or two objects, caption has {len(phrases)}: {text!r}")
    objects = []
    for p in phrases:
        if len(p) < 6 or p[0] != "a":
            raise UserError(f"cannot parse object phrase {' '.join(p)!r} in {text!r}")
        _, size, color, shape, *motion = p
        _check_names("size", [size], SIZES)
        _check_names("color", [color], COLORS)
        _check_names("shape", [shape], SHAPES)
        _check_names("motion", [" ".join(motion)], MOTIONS)
        objects.append(ObjectSpec(size, color, shape, " ".join(motion)))
    if len({o.color for o in objects}) != len(objects):
        raise UserError(f"two objects share a color: {text!r}")
    return CaptionSpec(bg, tuple(objects))


def caption_from_parts(objects: Sequence[ObjectSpec], background: str) -> str:
    return CaptionSpec(background, tuple(objects)).text


def free_travel_frames(obj: ShapeObject, height: int, width: int) -> int:
    """Frames before the first wall contact (inf-like large number for still objects)."""
    out = math.inf
    for p, v, span in ((obj.x, obj.vx, width - obj.px), (obj.y, obj.vy, height - obj.px)):
        if v > 0:
            out = min(out, (span - p) / v)
        elif v < 0:
            out = min(out, p / -v)
    return int(out) if out != math.inf else 10**9
