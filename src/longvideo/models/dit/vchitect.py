"""The `parallel` family (Vchitect-2.0 `VchitectAttnProcessor`, generalised to any batch size); the file is
named after the seed so that it is not mistaken for the `longvideo.parallel` package.

Three attention branches read the same normalised tokens and are summed:
1. spatial: each frame attends to itself and to the text (joint attention over [frame tokens ; text]);
2. temporal: each spatial position attends across frames, with 1D RoPE over the frame index;
3. cross: every token attends to the text only.
The temporal and cross output projections start at zero, so a fresh block is a per-frame image block, and
with one frame the temporal branch is skipped (Vchitect multiplies it by zero). "One frame" is the clip's
frame count (`BlockInputs.num_frames`): a share of a longer clip that holds one frame still attends across
frames (its temporal op sees a one-frame sequence, which an injected attention function may extend).

`text_stream=True` is Vchitect's (SD3 MM-DiT) dual stream: the text has its own modulation, queries, output
projections and feed-forward, and, because Vchitect batches frames, one copy per frame: text states are
(B, T*L, D). Text tokens then also join the temporal branch (each text position across frames) and query the
cross branch; the keys of the cross branch are frame 0's text. The last block only reads the text (SD3
`context_pre_only`). Vchitect scales the spatial output by 1.1 before `to_out.0` / `to_add_out`; a converter
folds that in (both projections x1.1, `to_out_context` / 1.1) rather than this model carrying the constant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longvideo.models.dit.blocks import BlockInputs, ModulatedBlock, modulation_vectors
from longvideo.models.dit.config import DiTConfig
from longvideo.models.dit.layers import (
    AdaLNZero,
    AttentionOp,
    FeedForward,
    layer_norm,
    merge_heads,
    modulate,
    split_heads,
)
from longvideo.models.dit.rope import Rope


def _across_frames(y: Tensor, b: int, t: int) -> Tensor:
    """(B*T, heads, N, d) per-frame layout -> (B*N, heads, T, d): one sequence per position."""
    _, nh, n, d = y.shape
    return y.unflatten(0, (b, t)).permute(0, 3, 2, 1, 4).reshape(b * n, nh, t, d)


def _from_frames(o: Tensor, b: int, t: int) -> Tensor:
    """(B*N, heads, T, d) -> (B, T*N, heads*d) tokens, t outer."""
    _, nh, _, d = o.shape
    return o.unflatten(0, (b, -1)).permute(0, 3, 1, 2, 4).reshape(b, -1, nh * d)


class FirstFrame(nn.Module):
    """Frame 0's slice of per-frame tensors, (B, T, ...) -> (B, ...): the dual stream's cross-attention keys
    and values are frame 0's text. `select_fn` is a plain attribute that code outside the model may swap
    (parallel/: with the frames split over ranks, frame 0 lives on one of them). No parameters, no state."""

    def __init__(self):
        super().__init__()
        self.select_fn = _frame_zero

    def forward(self, x: Tensor) -> Tensor:
        return self.select_fn(x)


def _frame_zero(x: Tensor) -> Tensor:
    return x[:, 0]


class ParallelAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, dual: bool, text_queries: bool):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.dual = dual
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner) for _ in range(3))
        self.to_q_temp, self.to_k_temp, self.to_v_temp = (nn.Linear(dim, inner) for _ in range(3))
        self.to_q_cross = nn.Linear(dim, inner)
        self.add_k_proj, self.add_v_proj = nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.add_q_proj = nn.Linear(dim, inner) if text_queries else None
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])
        self.to_out_temporal = nn.Linear(inner, dim)  # zero-init
        self.to_out_context = nn.Linear(inner, dim)  # zero-init
        self.to_add_out = nn.Linear(inner, dim) if text_queries else None
        self.to_add_out_temporal = nn.Linear(inner, dim) if text_queries else None  # zero-init
        self.spatial_op, self.temporal_op, self.cross_op = (
            AttentionOp(k) for k in ("spatial", "temporal", "cross")
        )
        self.first_frame = FirstFrame()

    def _temporal(self, q: Tensor, k: Tensor, v: Tensor, b: int, t: int, rope: Rope) -> Tensor:
        """per-frame (B*T, heads, N, d) q/k/v -> (B, T*N, inner) attention across frames."""
        q, k, v = (_across_frames(y, b, t) for y in (q, k, v))
        return _from_frames(self.temporal_op(rope(q), rope(k), v, None), b, t)

    def forward(self, h: Tensor, ht: Tensor, c: BlockInputs) -> tuple[Tensor, Tensor | None]:
        """h (B, T*S, D) normalised video; ht the text keys/values come from: (B, T*L, D) normalised text
        stream, or (B, L, D) caption. Returns the video update and (text queries only) the text update."""
        t, s = c.grid[0], c.grid[1] * c.grid[2]
        b, nh = h.shape[0], self.heads
        hv = h.reshape(b * t, s, -1)  # frames as batch
        tq = None  # text queries: the dual stream's text is updated too (except in the last block)
        if self.dual:
            tt = ht.reshape(b * t, -1, ht.shape[-1])
            tk, tv = (split_heads(f(tt), nh) for f in (self.add_k_proj, self.add_v_proj))  # (BT, nh, L, d)
            k0, v0 = (self.first_frame(y.unflatten(0, (b, t))) for y in (tk, tv))  # frame 0's text
            if self.add_q_proj is not None:
                tq = split_heads(self.add_q_proj(tt), nh)
        else:
            k0, v0 = (split_heads(f(ht), nh) for f in (self.add_k_proj, self.add_v_proj))  # (B, nh, L, d)
            tk, tv = k0.repeat_interleave(t, 0), v0.repeat_interleave(t, 0)
        n_text = tk.shape[2]

        # 1. spatial: joint attention over [frame ; text] per frame
        q, k, v = (split_heads(f(hv), nh) for f in (self.to_q, self.to_k, self.to_v))  # (BT, nh, S, d)
        mask = None
        if c.text_mask is not None:  # video keys always visible
            mask = torch.cat([c.text_mask.new_ones(b, 1, 1, s), c.text_mask], dim=-1).repeat_interleave(t, 0)
        qs = q if tq is None else torch.cat([q, tq], dim=2)
        sp = merge_heads(self.spatial_op(qs, torch.cat([k, tk], 2), torch.cat([v, tv], 2), mask))
        sp_v = sp[:, :s].reshape(b, t * s, -1)

        # 2. cross: all tokens of all frames attend to the text
        qc = split_heads(self.to_q_cross(h), nh)  # (B, nh, T*S, d)
        if tq is not None:
            qc = torch.cat([qc, tq.unflatten(0, (b, t)).transpose(1, 2).flatten(2, 3)], dim=2)
        cr = self.to_out_context(merge_heads(self.cross_op(qc, k0, v0, c.text_mask)))

        out = self.to_out[0](sp_v + cr[:, : t * s])
        temporal = c.num_frames > 1  # the clip's frames, not this share's
        if temporal:  # 3. temporal
            qt, kt, vt = (split_heads(f(hv), nh) for f in (self.to_q_temp, self.to_k_temp, self.to_v_temp))
            out = out + self.to_out_temporal(self._temporal(qt, kt, vt, b, t, c.rope))
        if tq is None:
            return out, None
        out_text = self.to_add_out(sp[:, s:].reshape(b, t * n_text, -1) + cr[:, t * s :])
        if temporal:
            out_text = out_text + self.to_add_out_temporal(self._temporal(tq, tk, tv, b, t, c.rope))
        return out, out_text


class ParallelBlock(ModulatedBlock):
    def __init__(self, cfg: DiTConfig, last: bool):
        super().__init__(cfg)
        d = cfg.dim
        self.dual = cfg.text_stream
        self.text_out = cfg.text_stream and not last  # the last block only reads the text
        self.attn = ParallelAttention(d, cfg.num_heads, cfg.head_dim, self.dual, self.text_out)
        self.ff = FeedForward(d, cfg.ff_mult)
        self.scale_shift_table_context = self.norm1_context = self.ff_context = None
        if self.dual:
            n = 6 if self.text_out else 2  # (shift, scale[, gate, shift, scale, gate]) of the text
            if cfg.adaln == "single":
                self.scale_shift_table_context = nn.Parameter(torch.empty(n, d))
            else:
                self.norm1_context = AdaLNZero(d, n)
            self.ff_context = FeedForward(d, cfg.ff_mult) if self.text_out else None

    def forward(self, x: Tensor, text: Tensor, c: BlockInputs) -> tuple[Tensor, Tensor]:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)
        h = modulate(layer_norm(x, self.eps), shift1, scale1)
        if self.dual:
            n = 6 if self.text_out else 2
            cm = modulation_vectors(self.scale_shift_table_context, self.norm1_context, c, n)
            ht = modulate(layer_norm(text, self.eps), cm[0], cm[1])
        else:
            ht = text  # the caption, as PixArt's cross-attention reads it
        out, out_text = self.attn(h, ht, c)
        x = x + gate1 * out
        x = x + gate2 * self.ff(modulate(layer_norm(x, self.eps), shift2, scale2))
        if out_text is not None:
            text = text + cm[2] * out_text
            text = text + cm[5] * self.ff_context(modulate(layer_norm(text, self.eps), cm[3], cm[4]))
        return x, text
