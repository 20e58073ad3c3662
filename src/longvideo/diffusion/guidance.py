"""Classifier-free guidance (Ho & Salimans 2022) with a negative prompt, as a denoiser wrapper.

Guidance is applied to the x0 prediction: x0_u + scale (x0_c - x0_u). For a fixed x_t and t every objective's
prediction (eps, v, flow velocity) is an affine function of x0_hat with the same coefficients for both
branches (objectives.py), so guiding x0 is exactly guiding eps, v or the velocity with the same scale, and the
wrapper does not need to know the objective.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor


def cfg_denoiser(
    denoise: Callable[..., Tensor],
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any],
    scale: float | Tensor,
) -> Callable[[Tensor, float], Tensor]:
    """Guided denoiser `(x_t, t) -> x0_u + scale (x0_c - x0_u)` for the samplers.

    denoise(x_t, t, **model_kwargs) -> x0_hat, e.g. from `make_denoiser`. cond / uncond: the model kwargs of
    the prompt and of the negative (or empty) prompt, same keys, tensors with the batch first and equal shapes
    past it (pad text to one length). They are concatenated here once, so each step makes ONE model call on a
    doubled batch [cond; uncond]. scale: 1 gives the cond denoiser, 0 the uncond one; a tensor broadcastable
    to x (e.g. (1, 1, T, 1, 1)) gives per-frame guidance. With scale 1 the uncond half is wasted: call the
    plain denoiser instead.
    """
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond need the same keys, got {sorted(cond)} and {sorted(uncond)}")
    both = {k: _cat(k, cond[k], uncond[k]) for k in cond}

    def guided(x: Tensor, t: float) -> Tensor:
        x0_c, x0_u = denoise(torch.cat([x, x]), t, **both).chunk(2)
        return x0_u + scale * (x0_c - x0_u)

    return guided


def _cat(key: str, c: Any, u: Any) -> Any:
    if isinstance(c, Tensor) and isinstance(u, Tensor):
        return torch.cat([c, u])
    if c is None and u is None:
        return None
    if isinstance(c, Tensor) or isinstance(u, Tensor) or c != u:
        raise ValueError(f"cfg_denoiser: {key!r} must be tensors on both sides or the same value")
    return c  # a plain option shared by both halves
