"""Conversion between model tensors, float (C, T, H, W) in [-1, 1], and uint8 RGB frames (T, H, W, 3)."""

from __future__ import annotations

import numpy as np
import torch

from longvideo.errors import UserError

__all__ = ["from_uint8_frames", "to_uint8_frames"]


def to_uint8_frames(x: torch.Tensor) -> np.ndarray:
    """Model output in [-1, 1], (C, T, H, W) or (1, C, T, H, W), C = 3 (or 1) -> uint8 (T, H, W, 3)."""
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise UserError(f"expected a batch of one video (1, C, T, H, W), got shape {tuple(x.shape)}")
        x = x[0]
    if x.ndim != 4 or x.shape[0] not in (1, 3):
        raise UserError(f"expected (C, T, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    u8 = ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # (C, T, H, W)
    u8 = u8.expand(3, -1, -1, -1)  # grey -> RGB (no-op for C = 3)
    return u8.permute(1, 2, 3, 0).cpu().numpy().copy()  # (T, H, W, 3), contiguous


def from_uint8_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]; `to_uint8_frames` inverts it exactly."""
    t = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise UserError(f"expected uint8 frames (T, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return (t.permute(3, 0, 1, 2).float() / 127.5 - 1).contiguous()  # (3, T, H, W)
