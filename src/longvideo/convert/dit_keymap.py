"""What the DiT converters share: a key map (ours <- theirs, with a transform), the source config reader,
and loading onto the meta device.

A `KeyMap` lists every target key once with the source key it comes from; source keys that carry no
weight of ours (a sinusoid table we compute, an output the source discards) are listed with a check.
`convert` applies it and fails loudly, in one line:
- a map that misses or invents one of *our* keys is a converter bug (AssertionError);
- a source that lacks mapped keys, has keys the map does not explain, or has shapes the config does not
  imply is the user's file (UserError naming the keys; if the keys look like another model family, the
  error names that family first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from longvideo.convert.keymap import check_all_set
from longvideo.convert.sniff import describe, identify
from longvideo.errors import UserError
from longvideo.models.dit import DiTConfig, VideoDiT, build_dit

Transform = Callable[[Tensor], Tensor]
Check = Callable[[Tensor], str | None]  # a problem with a consumed-only source tensor, or None


@dataclass
class KeyMap:
    """Our key -> (their key, transform or None); their consumed-only keys -> a check (or None)."""

    source: str  # e.g. "Open-Sora-Plan v1.2 OpenSoraT2V", for messages
    family: str  # the sniff family this converter reads ("osp-v1.2", "easyanimate", "vchitect-2")
    pairs: dict[str, tuple[str, Transform | None]] = field(default_factory=dict)
    consumed: dict[str, Check | None] = field(default_factory=dict)

    def add(self, ours: str, theirs: str | None = None, transform: Transform | None = None) -> None:
        assert ours not in self.pairs, f"key map names {ours} twice"
        self.pairs[ours] = (ours if theirs is None else theirs, transform)

    def same(self, *modules: str, bias: bool = True) -> None:
        """Modules whose `.weight` (and `.bias`) keep their names."""
        for m in modules:
            self.add(f"{m}.weight")
            if bias:
                self.add(f"{m}.bias")

    def consume(self, theirs: str, check: Check | None = None) -> None:
        self.consumed[theirs] = check


def conv2d_as_3d(w: Tensor) -> Tensor:
    """The seeds patchify each frame with a Conv2d (D, C, p, p): our Conv3d kernel with temporal size 1."""
    return w[:, :, None]


def pixart_stem(km: KeyMap) -> KeyMap:
    """The PixArt-alpha stem both OSP v1.2 and EasyAnimate keep under its own names: the frame patch
    embedding (a Conv2d there), adaLN-single, the caption MLP, the output projection and its table."""
    km.add("pos_embed.proj.weight", transform=conv2d_as_3d)
    km.add("pos_embed.proj.bias")
    km.same(
        "adaln_single.emb.timestep_embedder.linear_1", "adaln_single.emb.timestep_embedder.linear_2",
        "adaln_single.linear", "caption_projection.linear_1", "caption_projection.linear_2", "proj_out",
    )  # fmt: skip
    km.add("scale_shift_table")
    return km


def _some(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def convert(sd: dict[str, Tensor], model: VideoDiT, km: KeyMap, dtype: torch.dtype) -> dict[str, Tensor]:
    """Our state dict for `model` (meta is fine) from a source state dict, cast to `dtype`."""
    target = {k: v.shape for k, v in model.state_dict().items()}
    assert set(km.pairs) == set(target), (
        f"{km.source} key map: missing {_some(set(target) - set(km.pairs))}; "
        f"invented {_some(set(km.pairs) - set(target))}"
    )
    theirs = [t for t, _ in km.pairs.values()]
    assert len(set(theirs)) == len(theirs), f"{km.source} key map uses a source key twice"
    missing = sorted({t for t in theirs if t not in sd})
    unused = sorted(set(sd) - set(theirs) - set(km.consumed))
    if missing or unused:
        found = identify(sd)
        if found is not None and found[1] != km.family:
            raise UserError(f"the checkpoint holds {describe(found)}, not {km.source}")
        raise UserError(
            f"the {km.source} checkpoint does not match its config: "
            + (f"{len(missing)} keys the config implies are missing ({_some(missing)})" if missing else "")
            + ("; " if missing and unused else "")
            + (f"{len(unused)} keys the config does not explain ({_some(unused)})" if unused else "")
        )
    out: dict[str, Tensor] = {}
    bad: list[str] = []
    for ours, (key, fn) in km.pairs.items():
        v = sd[key].to(dtype)
        try:
            v = fn(v) if fn is not None else v
        except (IndexError, RuntimeError):  # a transform given a tensor of the wrong rank
            v = torch.empty(0)
        if v.shape != target[ours]:
            bad.append(f"{key} is {tuple(sd[key].shape)}, the config implies {tuple(target[ours])}")
            continue
        out[ours] = v.contiguous()
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UserError(f"the {km.source} checkpoint does not match its config: {bad[0]}{more}")
    for key, check in km.consumed.items():
        problem = check(sd[key]) if check is not None and key in sd else None
        if problem:
            raise UserError(f"the {km.source} checkpoint's {key}: {problem}")
    return out


def load_dit(cfg: DiTConfig, sd: dict[str, Tensor], km: KeyMap, dtype: torch.dtype) -> VideoDiT:
    """Our VideoDiT for `cfg`, built on the meta device, holding the mapped source tensors (assign=True)."""
    model = build_dit(cfg, device="meta")
    model.load_state_dict(convert(sd, model, km, dtype), strict=True, assign=True)
    check_all_set(model)
    return model.eval().requires_grad_(False)


def table_check(expected: Callable[[int], Tensor], what: str, rows: int = 256) -> Check:
    """A check that a fixed table the source saved as a buffer (a sinusoid) is the one we compute:
    `expected(n)` gives our first n rows; the first `rows` stored rows are compared."""

    def check(stored: Tensor) -> str | None:
        n = min(rows, stored.shape[-2]) if stored.ndim >= 2 else 0
        want = expected(n)
        got = stored.float().reshape(-1, stored.shape[-1])[:n]
        if got.shape != want.shape:
            return f"shape {tuple(stored.shape)} is not that of the {what} ({tuple(want.shape)} rows first)"
        tol = 1e-5 if stored.dtype == torch.float32 else 1e-2  # fp16 / bf16 storage
        err = (got - want).abs().max().item()
        return None if err <= tol else f"is not the {what} we compute (max difference {err:.3g})"

    return check


# ----------------------------------------------------------------------------- the source's config.json


class SourceConfig:
    """A source model's constructor config, read so that every key is accounted for.

    `get` reads a key (missing and without a default: a problem), `expect` also checks the value against
    what our model can express, `ignore` marks keys without effect on our weights or outputs. `finish`
    raises one UserError listing every problem, plus the keys nobody read whose value is set (not null,
    false, 0 or empty): an option we do not know is refused rather than silently dropped.
    """

    def __init__(self, raw: dict, source: str, defaults: dict[str, Any] | None = None):
        self.source = source
        self.c = {**(defaults or {}), **{k: v for k, v in raw.items() if not k.startswith("_")}}
        self.read: set[str] = set()
        self.problems: list[str] = []

    def get(self, key: str) -> Any:
        self.read.add(key)
        if key not in self.c:
            self.problems.append(f"missing {key}")
        return self.c.get(key)

    def expect(self, key: str, *allowed: Any, why: str = "") -> Any:
        v = self.get(key)
        if key in self.c and v not in allowed:
            ok = " or ".join(repr(a) for a in allowed)
            self.problems.append(f"{key}={v!r} (supported: {ok}{'; ' + why if why else ''})")
        return v

    def integer(self, key: str, minimum: int = 1) -> int:
        v = self.get(key)
        if key in self.c and (not isinstance(v, int) or isinstance(v, bool) or v < minimum):
            self.problems.append(f"{key}={v!r} (an integer >= {minimum})")
            return minimum
        return v if isinstance(v, int) else minimum

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def ignore(self, *keys: str) -> None:
        self.read.update(keys)

    def unknown(self) -> list[str]:
        """Keys nobody read whose value is set (not null, false, 0 or empty)."""
        return sorted(
            k for k, v in self.c.items() if k not in self.read and v not in (None, False, 0, "", [], {})
        )

    def finish(self) -> None:
        if self.unknown():
            self.problems.append(f"unknown option(s) {self.unknown()[:4]}")
        if self.problems:
            raise UserError(f"cannot convert this {self.source} config: " + "; ".join(self.problems))


__all__ = ["KeyMap", "SourceConfig", "conv2d_as_3d", "convert", "load_dit", "pixart_stem", "table_check"]
