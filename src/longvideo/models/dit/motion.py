"""The motion module of the `motion` family (EasyAnimate `attn_temporal`, after AnimateDiff).

Per block: GroupNorm per frame -> proj_in -> layers of [LayerNorm -> self-attention]* + GEGLU feed-forward
-> proj_out, added to the input. proj_out starts at zero, so a freshly inflated image model is unchanged.

Each attention first adds a sinusoidal frame-position embedding (computed for any number of frames) or,
after ExVideo post-tuning (extend/), rows of a trainable table followed by an identity-initialised 3x3x3
conv adapter, then attends either (positions are the frames' indices in the clip, `BlockInputs.frames`, so a
share of the frames gets the rows the whole clip would give it)
- "temporal": across frames at each spatial position, or with `motion_grid` n > 1 across frames *and* an
  n x n patch neighbourhood (EasyAnimate v1 "VanillaGrid"): tokens b t (h n) (w m) c -> (b h w) (t n m) c;
- "global": over all t*h*w tokens (EasyAnimate v3, odd blocks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from longvideo.models.dit.config import DiTConfig
from longvideo.models.dit.layers import Attention, FeedForward, TemporalAdapter, sinusoid_table

if TYPE_CHECKING:  # blocks.py imports this module
    from longvideo.models.dit.blocks import BlockInputs


class MotionAttention(Attention):
    def __init__(self, dim: int, heads: int, kind: str, grid: int, table: int = 0, adapter: bool = False):
        # AnimateDiff's q/k/v have no bias; "temporal" / "global" is also the AttentionOp kind
        super().__init__(dim, heads, dim // heads, kind, qkv_bias=False)
        self.kind = kind
        self.grid = grid
        # ExVideo: a trainable (N, D) table of frame positions (extend/ fills it) and the conv adapter
        self.pos_table = nn.Parameter(torch.zeros(table, dim)) if table else None
        self.temporal_adapter = TemporalAdapter(dim) if adapter else None

    def forward(self, h: Tensor, c: BlockInputs) -> Tensor:  # type: ignore[override]
        """h (B, T, H, W, D) normalised tokens of the frames c.frames -> attention output, same shape."""
        b, t, hh, ww, d = h.shape
        if self.pos_table is None:
            pe = sinusoid_table(c.frames, d, h.device)  # (T, D)
        elif c.num_frames > len(self.pos_table):
            n = c.num_frames
            raise ValueError(f"{n} frames is more than this model's position table ({len(self.pos_table)})")
        else:
            pe = self.pos_table[c.frames]  # (T, D)
        h = h + pe.to(h.dtype)[None, :, None, None]  # position of the frame
        if self.temporal_adapter is not None:
            h = self.temporal_adapter(h)
        if self.kind == "global":
            return super().forward(h.reshape(b, t * hh * ww, d)).reshape(h.shape)
        n = self.grid
        if hh % n or ww % n:
            raise ValueError(f"motion_grid {n} needs a patch grid divisible by {n}, got {hh}x{ww}")
        # b t (h n) (w m) d -> (b h w) (t n m) d
        seq = h.reshape(b, t, hh // n, n, ww // n, n, d).permute(0, 2, 4, 1, 3, 5, 6)
        out = super().forward(seq.reshape(-1, t * n * n, d))
        out = out.reshape(b, hh // n, ww // n, t, n, n, d).permute(0, 3, 1, 4, 2, 5, 6)
        return out.reshape(b, t, hh, ww, d)


class MotionLayer(nn.Module):
    """EasyAnimate's motion `TemporalTransformerBlock`: pre-norm attentions, then a GEGLU feed-forward."""

    def __init__(self, cfg: DiTConfig, kinds: list[str]):
        super().__init__()
        dim, table, adapter = cfg.dim, cfg.temporal_pos_table, cfg.temporal_adapter
        attns = [MotionAttention(dim, cfg.motion_heads, k, cfg.motion_grid, table, adapter) for k in kinds]
        self.attention_blocks = nn.ModuleList(attns)
        # AnimateDiff norms: affine LayerNorms with torch's default eps
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in kinds])
        self.ff = FeedForward(dim, 4, gated=True)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, c: BlockInputs) -> Tensor:  # (B, T, H, W, D)
        for attn, norm in zip(self.attention_blocks, self.norms, strict=True):
            h = h + attn(norm(h), c)
        return h + self.ff(self.ff_norm(h))


class MotionModule(nn.Module):
    def __init__(self, cfg: DiTConfig, kinds: list[str]):
        super().__init__()
        d = cfg.dim
        self.norm = nn.GroupNorm(cfg.motion_norm_groups, d, eps=1e-6)
        self.proj_in = nn.Linear(d, d)
        self.transformer_blocks = nn.ModuleList([MotionLayer(cfg, kinds) for _ in range(cfg.motion_layers)])
        self.proj_out = nn.Linear(d, d)  # zero-initialised by VideoDiT.init_weights

    def forward(self, x: Tensor, c: BlockInputs) -> Tensor:
        """x (B, T*H*W, D) -> same; (T, H, W) = c.grid."""
        b, n, d = x.shape
        t, hh, ww = c.grid
        h = self.norm(x.reshape(b * t, hh * ww, d).transpose(1, 2)).transpose(1, 2)  # GroupNorm per frame
        h = self.proj_in(h).reshape(b, t, hh, ww, d)
        for layer in self.transformer_blocks:
            h = layer(h, c)
        return x + self.proj_out(h.reshape(b, n, d))
