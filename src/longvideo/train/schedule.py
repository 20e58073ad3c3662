"""Learning-rate schedules: linear warmup, then cosine decay to a floor (or constant)."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")


def lr_at(
    step: int, lr: float, warmup: int, total: int, min_ratio: float = 0.1, kind: str = "cosine"
) -> float:
    """The learning rate of (0-based) step `step`: lr * (step + 1) / warmup during warmup; then cosine from
    lr down to lr * min_ratio at step `total` (held there after), or constant."""
    if kind not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {kind!r}")
    if step < warmup:
        return lr * (step + 1) / warmup
    if kind == "constant":
        return lr
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
