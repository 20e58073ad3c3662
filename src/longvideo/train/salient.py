"""Foreground-weighted losses: up-weight the few tokens (or pixels) where a clip departs from its own
background. Used by both trainers through their `salient_boost` option."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def salient_weights(x0: Tensor, boost: float, ratio: float = 4.0, dilate: int = 0) -> Tensor:
    """Per-token loss weights (B, 1, T, H, W): 1 + boost where ||x0 - median||_2 over channels exceeds
    `ratio` times that distance's median over the clip's tokens, 1 elsewhere (a clip's median latent is its
    background when objects are small).

    Why: with small objects on plain backgrounds the plain mean spends most of the loss on background
    tokens that are easy, and the irreducible noise of their targets drowns the gradient of the object's
    shape and motion (the shapes world's share of object tokens: BENCHMARKS.md).
    x0: (B, C, T, H, W) clean latents (or pixels: the VAE trainer); boost 0 gives all ones. dilate > 0 grows
    the salient set by that many positions in H and W (a decoder blurs an object into the ring around it).
    """
    flat = x0.detach().float().flatten(2)  # (B, C, N)
    dist = (flat - flat.median(dim=2, keepdim=True).values).norm(dim=1)  # (B, N)
    thresh = ratio * dist.median(dim=1, keepdim=True).values.clamp(min=1e-3)
    mask = (dist > thresh).float().view(x0.shape[0], 1, *x0.shape[2:])  # (B, 1, T, H, W)
    if dilate > 0:
        k = 2 * dilate + 1
        mask = F.max_pool3d(mask, (1, k, k), stride=1, padding=(0, dilate, dilate))
    return 1.0 + boost * mask
