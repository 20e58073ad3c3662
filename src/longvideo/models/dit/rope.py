"""Rotary position embeddings, computed from the actual patch grid of each call (no fixed table).

- 3D (Open-Sora-Plan v1.2 `RoPE3D`): head_dim is split equally into (t, h, w) parts; each part is rotated
  by rotate-half RoPE over its own axis, positions divided by that axis' interpolation scale.
- 1D over frames (Vchitect-2.0 temporal attention): theta 1e6, adjacent pairs rotated as complex numbers.

RIFLEx (arXiv 2502.15894) for longer windows: the temporal component k (1-based, the first whose period
exceeds the trained window) gets the frequency 0.9 * 2 pi / L, L the new window in frames, so it no longer
repeats inside it; `riflex=(k, L)`, `intrinsic_component` finds k.

A `Rope` holds cos/sin tables laid out like the features they rotate, so applying one is a multiply-add
whichever layout built it. Rotation runs in float32 (then casts back), as both seeds do.

Frame positions can be given explicitly (`frames`, global latent-frame indices): the table of a share of
the frames at their positions equals those rows of the whole clip's table, so a model holding only some
frames (frames split across ranks) rotates them as the whole clip would.
"""

from __future__ import annotations

import math
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


Riflex = tuple[int, int] | None  # (k, window): component k (1-based) -> frequency 0.9 * 2 pi / window


def frequencies(dim: int, theta: float, riflex: Riflex = None) -> Tensor:
    """(dim // 2,) float32 angular frequencies theta^(-2i/dim); RIFLEx replaces component k."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    if riflex is not None and riflex[0] > 0:
        k, window = riflex
        inv_freq[k - 1] = 0.9 * 2 * math.pi / window
    return inv_freq


def intrinsic_component(dim: int, theta: float, trained_frames: int) -> int:
    """RIFLEx's k (1-based): the highest-frequency component whose period 2 pi / w exceeds the trained
    window (HunyuanVideo: dim 16, theta 256, 33 latent frames -> k = 4, the paper's value)."""
    periods = 2 * math.pi / frequencies(dim, theta)
    longer = (periods > trained_frames).nonzero()
    if len(longer) == 0:
        raise ValueError(f"no RoPE component (dim {dim}, theta {theta}) outlasts {trained_frames} frames")
    return int(longer[0]) + 1


def _angles(pos: Tensor, dim: int, theta: float, riflex: Riflex = None) -> Tensor:
    """pos (L,) -> (L, dim // 2) angles pos * theta^(-2i/dim)."""
    return pos.float()[:, None] * frequencies(dim, theta, riflex).to(pos.device)[None]


def rope_3d_from_positions(pos: Tensor, head_dim: int, theta: float = 10000.0, riflex: Riflex = None) -> Rope:
    """pos (L, 3) float (t, h, w) positions -> Rope for (..., L, head_dim); `riflex` acts on t."""
    d = head_dim // 3
    ang = [_angles(pos[:, i], d, theta, riflex if i == 0 else None) for i in range(3)]
    ang = torch.cat([torch.cat((a, a), dim=-1) for a in ang], dim=-1)  # (L, head_dim): [t | h | w]
    return Rope(ang.cos(), ang.sin(), parts=3)


def grid_positions(
    grid: tuple[int, int, int], device: torch.device | str | None = None, frames: Tensor | None = None
) -> Tensor:
    """(T, H, W) -> (T*H*W, 3) integer (t, h, w) positions in token order (t outer, w inner); the t of
    frame i is frames[i] (frames (T,), default 0..T-1)."""
    t, h, w = (torch.arange(n, device=device) for n in grid)
    if frames is not None:
        if frames.shape != (grid[0],):
            raise ValueError(f"frames must be ({grid[0]},) for grid {tuple(grid)}, got {tuple(frames.shape)}")
        t = frames.to(device=h.device, dtype=h.dtype)
    return torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1).reshape(-1, 3)


def rope_3d(
    grid: tuple[int, int, int],
    head_dim: int,
    theta: float = 10000.0,
    scale: tuple[float, float, float] | list[float] = (1.0, 1.0, 1.0),
    device: torch.device | str | None = None,
    riflex: Riflex = None,
    frames: Tensor | None = None,
) -> Rope:
    """RoPE for all T*H*W tokens of a patch grid, positions divided by `scale` (t, h, w); frames (T,) the
    frames' positions (default 0..T-1, see grid_positions)."""
    scale_t = torch.tensor(scale, device=device, dtype=torch.float32)
    pos = grid_positions(grid, device, frames).float() / scale_t
    return rope_3d_from_positions(pos, head_dim, theta, riflex)


def rope_1d(
    pos: Tensor | int,
    head_dim: int,
    theta: float = 1e6,
    scale: float = 1.0,
    interleaved: bool = True,
    device: torch.device | str | None = None,
    riflex: Riflex = None,
) -> Rope:
    """RoPE along one axis: pos (L,) positions, or an int L for 0..L-1; positions divided by `scale`."""
    if isinstance(pos, int):
        pos = torch.arange(pos, device=device)
    ang = _angles(pos.float() / scale, head_dim, theta, riflex)  # (L, head_dim // 2)
    ang = ang.repeat_interleave(2, dim=-1) if interleaved else torch.cat((ang, ang), dim=-1)
    return Rope(ang.cos(), ang.sin(), parts=1, interleaved=interleaved)
