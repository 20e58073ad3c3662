"""Exponential moving average of a model's parameters (kept in float32 beside the model)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class EMA:
    """`shadow = decay * shadow + (1 - decay) * param` after every optimizer step.

    Warm-up: the effective decay is min(decay, (1 + n) / (10 + n)) after n updates, so early averages are
    not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, keys: Iterable[str] | None = None):
        """keys: the state-dict entries to average (e.g. only the trainable ones: a LoRA run need not keep
        a second copy of the frozen base); None = all of them."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        sd = model.state_dict()
        keys = list(sd) if keys is None else list(keys)
        self.shadow = {k: sd[k].detach().float().clone() for k in keys}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        sd = model.state_dict()
        for k, s in self.shadow.items():
            v = sd[k]
            if v.dtype.is_floating_point:
                s.mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, sd: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) ^ set(sd)
        if missing:
            raise ValueError(f"EMA state does not match the model: {sorted(missing)[:5]}")
        self.shadow = {k: v.float().clone() for k, v in sd.items()}
        self.updates = updates

    def copy_to(self, model: nn.Module) -> None:
        """Load the averages into `model` (entries without an average keep the model's values)."""
        sd = model.state_dict()
        model.load_state_dict(
            {k: self.shadow[k].to(v.dtype) if k in self.shadow else v for k, v in sd.items()}
        )
