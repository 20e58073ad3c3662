"""Transformer blocks of the `motion` and `full3d` families, and what every block shares.

Every block is called as `block(x, text, c) -> (x, text)`: x the video tokens (B, T*H*W, D) with t outer,
text the projected caption (B, L, D) (or the per-frame text stream of the dual-stream parallel family), c the
per-call `BlockInputs`. One signature lets code outside the model (parallel/) wrap any block (activation
checkpointing, hooks) without knowing the family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longvideo.models.dit.config import DiTConfig
from longvideo.models.dit.layers import AdaLNZero, Attention, FeedForward, layer_norm, modulate
from longvideo.models.dit.motion import MotionModule
from longvideo.models.dit.rope import Rope


@dataclass
class BlockInputs:
    """Computed once per forward by VideoDiT.embed and handed to every block.

    The blocks' tokens may be a share of the clip's frames (frames split across ranks): `grid` is the
    grid of the tokens the blocks see, `global_grid` the whole clip's, `frames` the clip positions of the
    tokens' frames, and `rope` is computed at those positions (VideoDiT.local_inputs makes such a share).
    A block reads frame positions and the frame count from `frames` / `global_grid`, never from grid[0].
    """

    grid: tuple[int, int, int]  # (T, H, W) patch grid of these tokens (T = this share's frames)
    temb: Tensor  # (B, D) timestep (+ pooled text) embedding
    t6: Tensor | None  # (B, 6D) shared adaLN-single modulation; None with adaln="zero"
    text_mask: Tensor | None  # (B, 1, 1, L) bool, True = attend; None = every text token
    rope: Rope | None = None  # full3d: 3D over the tokens; parallel: 1D over the frames; motion: none
    global_grid: tuple[int, int, int] | None = None  # (T_global, H, W) of the whole clip; None: = grid
    frames: Tensor | None = None  # (T,) int64 latent-frame index of each frame in the clip; None: 0..T-1

    def __post_init__(self) -> None:
        if self.global_grid is None:
            self.global_grid = self.grid
        if self.frames is None:
            self.frames = torch.arange(self.grid[0], device=self.temb.device)
        if tuple(self.frames.shape) != (self.grid[0],) or tuple(self.global_grid[1:]) != tuple(self.grid[1:]):
            raise ValueError(
                f"BlockInputs: frames {tuple(self.frames.shape)} and global grid {self.global_grid} do not "
                f"fit the grid {self.grid}"
            )

    @property
    def num_frames(self) -> int:
        """Latent frames of the whole clip (not of this share)."""
        return self.global_grid[0]


def modulation_vectors(table: Tensor | None, zero: AdaLNZero | None, c: BlockInputs, n: int) -> list[Tensor]:
    """n x (B, 1, D) modulation vectors (shift, scale, gate, ...) from the timestep.
    adaLN-single: a learned table plus the shared projection (n = 6) or the embedding itself (n = 2, as
    PixArt's final layer); adaLN-zero: the module's own projection of the embedding."""
    if zero is not None:
        m = zero(c.temb)
    else:
        base = c.t6.unflatten(1, (6, -1)) if n == 6 else c.temb[:, None]
        m = table[None] + base  # (B, n, D)
    return list(m.unsqueeze(2).unbind(1))


class ModulatedBlock(nn.Module):
    """The timestep modulation every family shares, with the seeds' keys: adaln="single" learns a
    `scale_shift_table` (6, D) (PixArt); adaln="zero" projects the embedding in `norm1.linear` (SD3)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.eps = cfg.norm_eps
        single = cfg.adaln == "single"
        self.scale_shift_table = nn.Parameter(torch.empty(6, d)) if single else None  # N(0, 1/D) init
        self.norm1 = None if single else AdaLNZero(d, 6)

    def modulation(self, c: BlockInputs) -> list[Tensor]:
        """shift, scale, gate of the attention; shift, scale, gate of the feed-forward: 6 x (B, 1, D)."""
        return modulation_vectors(self.scale_shift_table, self.norm1, c, 6)


class PixArtBlock(ModulatedBlock):
    """adaLN -> self-attention -> [motion module] -> cross-attention -> adaLN -> feed-forward.

    full3d (Open-Sora-Plan v1.2): self-attention over all T*H*W tokens with 3D RoPE.
    motion (EasyAnimate): self-attention within each frame, then the motion module mixes frames.
    As in PixArt, cross-attention reads the un-normalised tokens and has no gate.
    """

    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__(cfg)
        d, heads, hd = cfg.dim, cfg.num_heads, cfg.head_dim
        self.per_frame = cfg.family == "motion"
        self.attn1 = Attention(d, heads, hd, "spatial" if self.per_frame else "full")
        self.attn_temporal = None
        if cfg.family == "motion":
            kinds = cfg.motion_attn_odd if index % 2 == 1 and cfg.motion_attn_odd else cfg.motion_attn
            self.attn_temporal = MotionModule(cfg, kinds)
        self.attn2 = Attention(d, heads, hd, "cross")
        self.ff = FeedForward(d, cfg.ff_mult)

    def forward(self, x: Tensor, text: Tensor, c: BlockInputs) -> tuple[Tensor, Tensor]:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)
        h = modulate(layer_norm(x, self.eps), shift1, scale1)  # (B, N, D)
        if self.per_frame:
            b, n, d = h.shape
            t = c.grid[0]
            h = self.attn1(h.reshape(b * t, n // t, d)).reshape(b, n, d)  # frames as batch
        else:
            h = self.attn1(h, rope=c.rope)
        x = x + gate1 * h
        if self.attn_temporal is not None:
            x = self.attn_temporal(x, c)  # residual inside
        x = x + self.attn2(x, text, c.text_mask)
        x = x + gate2 * self.ff(modulate(layer_norm(x, self.eps), shift2, scale2))
        return x, text
