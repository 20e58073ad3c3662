"""Rotary position embeddings, computed from the actual patch grid of each call (no fixed table).

- 3D (Open-Sora-Plan v1.2 `RoPE3D`): head_dim is split equally into (t, h, w) parts; each part is rotated
  by rotate-half RoPE over its own axis, positions divided by that axis' interpolation scale.
- 1D over frames (Vchitect-2.0 temporal attention): theta 1e6, adjacent pairs rotated as complex numbers.

A `Rope` holds cos/sin tables laid out like the features they rotate, so applying one is a multiply-add
whichever layout built it. Rotation runs in float32 (then casts back), as both seeds do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Rope:
    cos: Tensor  # (L, head_dim) float32
    sin: Tensor  # (L, head_dim)
    parts: int = 1  # rotate-half within each of `parts` equal slices of head_dim (3 for t, h, w)
    interleaved: bool = False  # rotate pairs (2i, 2i+1) instead of halves

    def __call__(self, x: Tensor) -> Tensor:
        """x (..., L, head_dim) -> same, rotated by position."""
        xf = x.float()
        return (xf * self.cos + self._rotate(xf) * self.sin).to(x.dtype)

    def _rotate(self, x: Tensor) -> Tensor:
        if self.interleaved:  # (a, b) -> (-b, a) for each pair
            return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
        out = []
        for p in x.chunk(self.parts, dim=-1):
            a, b = p.chunk(2, dim=-1)
            out += [-b, a]
        return torch.cat(out, dim=-1)


def _angles(pos: Tensor, dim: int, theta: float) -> Tensor:
    """pos (L,) -> (L, dim // 2) angles pos * theta^(-2i/dim)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32) / dim)
    return pos.float()[:, None] * inv_freq[None]


def rope_3d_from_positions(pos: Tensor, head_dim: int, theta: float = 10000.0) -> Rope:
    """pos (L, 3) float (t, h, w) positions -> Rope for (..., L, head_dim)."""
    d = head_dim // 3
    ang = [_angles(pos[:, i], d, theta) for i in range(3)]
    ang = torch.cat([torch.cat((a, a), dim=-1) for a in ang], dim=-1)  # (L, head_dim): [t | h | w]
    return Rope(ang.cos(), ang.sin(), parts=3)


def grid_positions(grid: tuple[int, int, int], device: torch.device | str | None = None) -> Tensor:
    """(T, H, W) -> (T*H*W, 3) integer (t, h, w) positions in token order (t outer, w inner)."""
    t, h, w = (torch.arange(n, device=device) for n in grid)
    return torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1).reshape(-1, 3)


def rope_3d(
    grid: tuple[int, int, int],
    head_dim: int,
    theta: float = 10000.0,
    scale: tuple[float, float, float] | list[float] = (1.0, 1.0, 1.0),
    device: torch.device | str | None = None,
) -> Rope:
    """RoPE for all T*H*W tokens of a patch grid, positions divided by `scale` (t, h, w)."""
    pos = grid_positions(grid, device).float() / torch.tensor(scale, device=device, dtype=torch.float32)
    return rope_3d_from_positions(pos, head_dim, theta)


def rope_1d(
    pos: Tensor | int,
    head_dim: int,
    theta: float = 1e6,
    scale: float = 1.0,
    interleaved: bool = True,
    device: torch.device | str | None = None,
) -> Rope:
    """RoPE along one axis: pos (L,) positions, or an int L for 0..L-1; positions divided by `scale`."""
    if isinstance(pos, int):
        pos = torch.arange(pos, device=device)
    ang = _angles(pos.float() / scale, head_dim, theta)  # (L, head_dim // 2)
    ang = ang.repeat_interleave(2, dim=-1) if interleaved else torch.cat((ang, ang), dim=-1)
    return Rope(ang.cos(), ang.sin(), parts=1, interleaved=interleaved)
