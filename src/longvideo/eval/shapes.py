"""The shapes-world evaluator: what is in a video, and does it match its caption?

It looks only at pixels (decoded frames) and the caption text, never at the generator's parameters, so it
judges our renders and a model's samples the same way. Per frame:

1. background = the frame's median colour (objects cover at most ~16% of the canvas);
2. foreground = pixels far from it; split into connected components (8-connected);
3. each component's colour = the palette colour nearest to its eroded core (edges blur under H.264 and
   upsampling, cores do not); a component whose core holds two palette colours is two touching objects,
   split pixel by pixel;
4. per object colour: area, bounding box, and a shape guess (fill ratio + top/bottom asymmetry).

Over frames: presence fraction (and persistence: present, or hidden while another object -- one of the
caption's, when judging -- covers where it should be), majority shape and size, and motion from the
bounding-box centre track (median speed per axis; direction from the first FREE_TRAVEL frames, before any
wall reflection).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from longvideo.data.shapes import BACKGROUNDS, COLORS, FREE_TRAVEL, HELD_OUT, SIZES, parse_caption
from longvideo.errors import UserError


@dataclass
class ShapesEvalConfig:
    # A pixel is foreground when it is more than this share of the way from the background to its nearest
    # palette colour (0.5: the half-level set, the unbiased edge of a blurred shape) ...
    fg_level: float = 0.5
    fg_min_distance: float = 25.0  # ... and at least this far (RGB) from the background (noise floor)
    min_pixels: int = 15  # smaller components are noise (a small triangle has 60 px)
    min_core_pixels: int = 6  # a colour must hold this many core pixels (interior, after a 3x3 erosion)
    detect_frac: float = 0.2  # a colour seen in fewer frames than this is not an object
    persist_frac: float = 0.9  # present in at least this share of frames = "persists"
    still_speed: float = 0.5  # px/frame: below this an axis is not moving
    quick_speed: float = 1.5  # px/frame: at or above this "quickly", else "slowly"
    # Speed is measured over this many frames: an even step cancels the 2-frame flicker of H.264's 4:2:0
    # chroma blocks at object edges (an object moving 1 px/frame crosses a 2x2 block every other frame).
    motion_step: int = 4
    # > 0: each object also gets `present_timeline`, its present fraction in consecutive spans of this many
    # frames (where a long video loses an object: at the start, or at a window boundary); 0 = off.
    timeline: int = 0


# summarise()'s breakdowns: {expected shape: [right-shape rate, count]}, {pace: [right-motion rate, count]}
BY_EXPECTED = ("shape_by_expected", "motion_by_expected")

_OBJ_NAMES = list(COLORS)
_OBJ_RGB = torch.tensor([COLORS[c] for c in _OBJ_NAMES], dtype=torch.float32)  # (K, 3)
_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = torch.tensor([BACKGROUNDS[c] for c in _BG_NAMES], dtype=torch.float32)


# ----------------------------------------------------------------------------- per-frame detection


def _components(mask: torch.Tensor) -> torch.Tensor:
    """Connected components (8-neighbourhood) of (T, H, W) bool -> int labels, 0 = background.

    Every pixel starts with its own id; ids spread by 3x3 max-pooling inside the mask until nothing changes,
    so each component ends up labelled by its largest pixel id.
    """
    t, h, w = mask.shape
    ids = torch.arange(1, t * h * w + 1, dtype=torch.float64).view(t, 1, h, w)  # float64: exact ids
    m = mask.view(t, 1, h, w).to(torch.float64)
    lab = ids * m
    while True:
        nxt = F.max_pool2d(lab, 3, 1, 1) * m
        if torch.equal(nxt, lab):
            return lab.view(t, h, w).long()
        lab = nxt


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary erosion of (T, H, W) bool."""
    m = mask.float().unsqueeze(1)
    return (-F.max_pool2d(-m, 3, 1, 1)).squeeze(1) > 0.5


def _split(comp: torch.Tensor, colors: list[int], dist: torch.Tensor, cfg) -> dict[int, torch.Tensor]:
    """Split one component (H, W) among candidate colours: touching or overlapping objects.

    Each pixel goes to its nearest candidate colour. A colour whose share has no interior (nothing left
    after erosion) is a blended edge, not an object: H.264's 4:2:0 chroma turns a yellow-on-navy edge
    whitish, a blue/orange boundary purplish. Such colours are dropped and the split redone.
    """
    while len(colors) > 1:
        sub = torch.stack([dist[..., k] for k in colors]).argmin(0)  # (H, W) index into colors
        parts = {k: comp & (sub == i) for i, k in enumerate(colors)}
        solid = [k for k, m in parts.items() if int(_erode(m[None])[0].sum()) >= cfg.min_core_pixels]
        if len(solid) == len(colors) or not solid:
            return parts
        colors = solid
    return {colors[0]: comp} if colors else {}


@dataclass
class _Track:
    """One object colour's per-frame observations."""

    present: np.ndarray  # (T,) bool
    touching: np.ndarray  # (T,) bool: merged with another object (shape/size unreliable)
    occluded: np.ndarray  # (T,) bool: unseen, but where it would be another object is drawn (crossing)
    boxes: np.ndarray  # (T, 4) x0, y0, x1, y1 inclusive (nan where absent)
    centroids: np.ndarray  # (T, 2) x, y mean of the mask (nan where absent)
    shapes: list[str | None]


def _classify_shape(m: np.ndarray) -> str:
    """Shape of a cropped (h, w) bool mask tight to its bounding box."""
    h, w = m.shape
    fill = m.sum() / (h * w)
    top, bottom = m[: h // 2].sum(), m[h - h // 2 :].sum()
    if top < 0.6 * bottom:  # a triangle (apex up) holds ~1/3 of its area in the top half; others ~1/2
        return "triangle"
    return "square" if fill > 0.9 else "circle"


def detect(
    frames: np.ndarray, cfg: ShapesEvalConfig | None = None, occluders: set[str] | None = None
) -> dict:
    """Detect background and objects in uint8 frames (T, H, W, 3). Returns a JSON-able dict.

    occluders: the colours that may hide another object (None: any detected colour). A caption's judge
    passes its own objects: otherwise an object drawn in a drifted colour would "occlude" itself."""
    cfg = cfg or ShapesEvalConfig()
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise UserError(f"expected frames (T, H, W, 3), got shape {tuple(frames.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()  # (T, H, W, 3)
    t_len = x.shape[0]
    bg_rgb = x.flatten(1, 2).median(dim=1).values  # (T, 3)
    bg_idx = torch.cdist(bg_rgb, _BG_RGB).argmin(1)  # (T,)
    background = _BG_NAMES[Counter(bg_idx.tolist()).most_common(1)[0][0]]

    # Nearest object colour per pixel; a white object never sits on a white background, so on white
    # the "white" label would only catch the background's own compression noise.
    dist = torch.cdist(x.view(-1, 3), _OBJ_RGB).view(*x.shape[:3], -1)  # (T, H, W, K)
    if background == "white":
        dist[..., _OBJ_NAMES.index("white")] = float("inf")
    label = dist.argmin(-1)  # (T, H, W)
    from_bg = (x - bg_rgb[:, None, None]).norm(dim=-1)  # (T, H, W)
    contrast = (_OBJ_RGB[label] - bg_rgb[:, None, None]).norm(dim=-1)  # nearest colour's distance to bg
    fg = (from_bg > cfg.fg_level * contrast) & (from_bg > cfg.fg_min_distance)  # (T, H, W)
    comps = _components(fg)
    core = _erode(fg)

    tracks = {c: _new_track(t_len) for c in _OBJ_NAMES}
    for t in range(t_len):
        _detect_frame(comps[t], core[t], label[t], dist[t], cfg, tracks, t)
    _mark_occlusions(tracks, occluders)
    objects = [_summarise(c, tr, t_len, cfg) for c, tr in tracks.items()]
    objects = sorted(
        (o for o in objects if o["present_frac"] >= cfg.detect_frac), key=lambda o: -o["present_frac"]
    )
    first, last = bg_rgb[0].tolist(), bg_rgb[-1].tolist()
    return {
        "num_frames": t_len,
        "background": background,
        "background_rgb_first": [round(v, 1) for v in first],
        "background_rgb_last": [round(v, 1) for v in last],
        "background_drift": round(float((bg_rgb[-1] - bg_rgb[0]).abs().mean()), 2),
        "objects": objects,
    }


def _new_track(t_len: int) -> _Track:
    z = np.zeros(t_len, bool)
    return _Track(
        z.copy(), z.copy(), z.copy(), np.full((t_len, 4), np.nan), np.full((t_len, 2), np.nan), [None] * t_len
    )


def _mark_occlusions(tracks: dict[str, _Track], occluders: set[str] | None = None) -> None:
    """An object hidden behind another one while they cross is occluded, not gone.

    Its expected centre in an unseen frame is interpolated between the nearest frames where it was seen;
    if another object's box (of a colour in `occluders`, if given) covers that point, the frame counts as
    occluded.
    """
    seen = {c: tr for c, tr in tracks.items() if tr.present.any()}
    hiders = {c: tr for c, tr in seen.items() if occluders is None or c in occluders}
    for c, tr in seen.items():
        idx = np.nonzero(tr.present)[0]
        cx = np.interp(np.arange(len(tr.present)), idx, (tr.boxes[idx, 0] + tr.boxes[idx, 2]) / 2)
        cy = np.interp(np.arange(len(tr.present)), idx, (tr.boxes[idx, 1] + tr.boxes[idx, 3]) / 2)
        for t in np.nonzero(~tr.present)[0]:
            for other_c, other in hiders.items():
                b = other.boxes[t]
                if other_c != c and other.present[t] and b[0] <= cx[t] <= b[2] and b[1] <= cy[t] <= b[3]:
                    tr.occluded[t] = True


def _detect_frame(comps, core, label, dist, cfg, tracks: dict[str, _Track], t: int) -> None:
    best: dict[str, tuple[int, np.ndarray, bool]] = {}  # colour -> (area, mask, touching)
    for cid in torch.unique(comps):
        if cid == 0:
            continue
        comp = comps == cid
        area = int(comp.sum())
        if area < cfg.min_pixels:
            continue
        comp_core = comp & core
        if comp_core.sum() == 0:  # thin component: use all of it
            comp_core = comp
        counts = torch.bincount(label[comp_core], minlength=len(_OBJ_NAMES))
        colors = [k for k in range(len(_OBJ_NAMES)) if counts[k] >= cfg.min_core_pixels]
        parts = _split(comp, colors, dist, cfg)
        for k, m in parts.items():
            a = int(m.sum())
            name = _OBJ_NAMES[k]
            if a >= cfg.min_pixels and a > best.get(name, (0,))[0]:
                best[name] = (a, m.numpy(), len(colors) > 1)
    for name, (_, m, touching) in best.items():
        tr = tracks[name]
        ys, xs = np.nonzero(m)
        tr.present[t] = True
        tr.touching[t] = touching
        tr.boxes[t] = (xs.min(), ys.min(), xs.max(), ys.max())
        tr.centroids[t] = (xs.mean(), ys.mean())
        tr.shapes[t] = _classify_shape(m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


# ----------------------------------------------------------------------------- per-object summary


def _summarise(color: str, tr: _Track, t_len: int, cfg: ShapesEvalConfig) -> dict:
    present_frac = float(tr.present.mean())
    visible_or_hidden = float((tr.present | tr.occluded).mean())
    out: dict = {
        "color": color,
        "present_frac": round(present_frac, 4),
        "persist_frac": round(visible_or_hidden, 4),
    }
    if cfg.timeline > 0:
        spans = range(0, t_len, cfg.timeline)
        out["present_timeline"] = [round(float(tr.present[i : i + cfg.timeline].mean()), 3) for i in spans]
    if not tr.present.any():
        return out
    clean = tr.present & ~tr.touching
    use = clean if clean.any() else tr.present
    extent = np.maximum(tr.boxes[use, 2] - tr.boxes[use, 0], tr.boxes[use, 3] - tr.boxes[use, 1]) + 1
    size_px = float(np.median(extent))
    # Shapes seen while touching another object are cut by the split: used only when nothing else is.
    shapes = [s for s, ok in zip(tr.shapes, use, strict=True) if ok and s is not None]
    shape, n = Counter(shapes).most_common(1)[0] if shapes else (None, 0)
    out |= {
        "shape": shape,
        "shape_consistency": round(n / len(shapes), 4) if shapes else 0.0,
        "size": min(SIZES, key=lambda s: abs(SIZES[s] - size_px)),
        "size_px": size_px,
    }
    out |= _motion(tr, clean, cfg)
    return out


def _motion(tr: _Track, clean: np.ndarray, cfg: ShapesEvalConfig) -> dict:
    c = tr.centroids  # (T, 2) x, y
    k = min(cfg.motion_step, len(c) - 1)
    if k < 1:
        return {"motion": None, "speed": None}

    def steps(ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame displacement measured over k frames (P, 2), and each one's start frame (P,)."""
        pair = ok[:-k] & ok[k:]
        return (c[k:] - c[:-k])[pair] / k, np.nonzero(pair)[0]

    d, _ = steps(clean)  # between clean observations ...
    if len(d) == 0:  # ... or, for an object touching another all along, any two observations
        d, _ = steps(tr.present)
    if len(d) == 0:
        return {"motion": None, "speed": None}
    speed = np.median(np.abs(d), axis=0)  # (2,) px/frame on x, y; median skips the reflections
    moving = speed >= cfg.still_speed
    if not moving.any():
        motion = "staying still"
    elif moving.all():
        motion = "bouncing around"
    else:
        axis = int(moving[1])
        # The caption's direction is the one before the first wall contact (FREE_TRAVEL frames).
        d_all, start = steps(tr.present)
        early = d_all[start + k <= FREE_TRAVEL, axis]
        sign = early.sum() if len(early) else d[0, axis]
        direction = (("left", "right"), ("up", "down"))[axis][int(sign > 0)]
        pace = "quickly" if speed[axis] >= cfg.quick_speed else "slowly"
        motion = f"moving {direction} {pace}"
    return {"motion": motion, "speed": [round(float(v), 3) for v in speed]}


# ----------------------------------------------------------------------------- judging against a caption


def evaluate(frames: np.ndarray, caption: str | None = None, cfg: ShapesEvalConfig | None = None) -> dict:
    """Detect, and when a caption is given judge every attribute it states. `correct` = all of them."""
    cfg = cfg or ShapesEvalConfig()
    if caption is None:
        return detect(frames, cfg)
    spec = parse_caption(caption)
    det = detect(frames, cfg, occluders={o.color for o in spec.objects})
    found = {o["color"]: o for o in det["objects"]}
    judged = []
    for o in spec.objects:
        d = found.get(o.color, {"color": o.color, "present_frac": 0.0})
        ok = {
            "found": o.color in found,
            "shape": d.get("shape") == o.shape,
            "size": d.get("size") == o.size,
            "motion": d.get("motion") == o.motion,
            "present": d.get("persist_frac", 0.0) >= cfg.persist_frac,
        }
        expected = {"color": o.color, "shape": o.shape, "size": o.size, "motion": o.motion}
        held = (o.color, o.shape) in HELD_OUT
        judged.append({"expected": expected, "held_out": held, "detected": d, "ok": ok})
    extra = [o for c, o in found.items() if c not in {s.color for s in spec.objects}]
    bg_ok = det["background"] == spec.background
    correct = bg_ok and not extra and all(all(j["ok"].values()) for j in judged)
    return {
        "caption": spec.text,
        "correct": correct,
        "background_ok": bg_ok,
        "objects": judged,
        "extra_objects": extra,
        "detection": det,
    }


def summarise(results: list[dict]) -> dict:
    """Accuracy per attribute over judged results, overall and split by seen / held-out (color, shape)."""
    out: dict = {"videos": len(results)}
    if results:
        out["correct"] = round(float(np.mean([r["correct"] for r in results])), 4)
        out["background"] = round(float(np.mean([r["background_ok"] for r in results])), 4)
    objs = [o for r in results for o in r["objects"]]
    for group, sel in (("all", objs), ("seen", [o for o in objs if not o["held_out"]])):
        out[group] = _rates(sel)
    out["held_out"] = _rates([o for o in objs if o["held_out"]])
    # where shape and motion fail: the right-shape rate per expected shape, right-motion per expected pace
    out[BY_EXPECTED[0]] = _rate_by(objs, "shape", lambda e: e["shape"])
    out[BY_EXPECTED[1]] = _rate_by(objs, "motion", lambda e: e["motion"].split()[-1])
    return out


def _rate_by(objs: list[dict], key: str, group) -> dict:
    groups: dict[str, list[bool]] = {}
    for o in objs:
        groups.setdefault(group(o["expected"]), []).append(o["ok"][key])
    return {g: [round(float(np.mean(v)), 4), len(v)] for g, v in sorted(groups.items())}


def _rates(objs: list[dict]) -> dict:
    if not objs:
        return {"objects": 0}
    keys = objs[0]["ok"].keys()
    return {"objects": len(objs)} | {k: round(float(np.mean([o["ok"][k] for o in objs])), 4) for k in keys}


def evaluate_manifest(
    manifest: str | Path, cfg: ShapesEvalConfig | None = None, limit: int | None = None, progress: bool = True
):
    """Judge every row of a shapes manifest (`path` relative to its folder, `caption`). Yields results."""
    from tqdm import tqdm

    from longvideo.data.video_io import read_video

    manifest = Path(manifest)
    rows = read_manifest(manifest)[:limit]
    for row in tqdm(rows, desc="eval shapes", unit="video", disable=not progress):
        res = evaluate(read_video(manifest.parent / row["path"]), row["caption"], cfg)
        yield {"path": row["path"]} | res


def read_manifest(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{i}: not valid JSON") from None
        if not isinstance(row, dict) or "path" not in row or "caption" not in row:
            raise UserError(f"{path}:{i}: a row needs 'path' and 'caption'")
        if not isinstance(row["path"], str) or not row["path"] or not isinstance(row["caption"], str):
            raise UserError(f"{path}:{i}: 'path' must be a non-empty string and 'caption' a string")
        rows.append(row)
    return rows
