"""Building blocks of the video DiT: the one attention function, attention and feed-forward layers,
timestep / caption embeddings, patch embedding and sin-cos positions.

Module and parameter names follow the diffusers / PixArt layout the seeds' checkpoints use (`to_q`,
`to_out.0`, `ff.net.0.proj`, `linear_1`, ...), so their converters are renames, not surgery.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longvideo.models.dit.rope import Rope

# ----------------------------------------------------------------------------- attention

# (q, k, v, mask) -> out; q (B, heads, Lq, head_dim), k/v (B, heads, Lk, head_dim), mask None or bool
# broadcastable to (B, heads, Lq, Lk) with True = attend. Returns (B, heads, Lq, head_dim).
AttentionFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """The default attention: torch's fused scaled-dot-product attention."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class AttentionOp(nn.Module):
    """One attention call site. `attention_fn` is a plain attribute: `VideoDiT.set_attention_fn` (or code
    outside the model, in parallel/) swaps it; `kind` says what the call attends over:
    "spatial" (per frame), "temporal" (per position, across frames), "full" (all t*h*w tokens),
    "global" (motion module's full attention) or "cross" (to text). No parameters, no state."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.attention_fn: AttentionFn = sdpa_attention

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attention_fn(q, k, v, mask)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, fn={getattr(self.attention_fn, '__name__', self.attention_fn)}"


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)"""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, L, d) -> (B, L, heads * d)"""
    return x.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Multi-head attention: self-attention, or cross-attention when `context` is given."""

    def __init__(
        self, dim: int, heads: int, head_dim: int, kind: str, kv_dim: int | None = None, qkv_bias: bool = True
    ):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(kv_dim or dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(kv_dim or dim, inner, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # `to_out.0`, as diffusers
        self.op = AttentionOp(kind)

    def forward(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None, rope: Rope | None = None
    ) -> Tensor:
        """x (B, L, dim), context (B, Lk, kv_dim) -> (B, L, dim); `rope` rotates q and k."""
        ctx = x if context is None else context
        q = split_heads(self.to_q(x), self.heads)
        k = split_heads(self.to_k(ctx), self.heads)
        v = split_heads(self.to_v(ctx), self.heads)
        if rope is not None:
            q, k = rope(q), rope(k)
        return self.to_out[0](merge_heads(self.op(q, k, v, mask)))


# ----------------------------------------------------------------------------- feed-forward


class GELUProj(nn.Module):
    """`net.0` of a diffusers FeedForward: Linear then GELU (tanh) or GEGLU (half gates the other half)."""

    def __init__(self, dim: int, hidden: int, gated: bool):
        super().__init__()
        self.gated = gated
        self.proj = nn.Linear(dim, hidden * (2 if gated else 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            h, gate = self.proj(x).chunk(2, dim=-1)
            return h * F.gelu(gate)  # exact GELU, as diffusers' GEGLU
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """dim -> mult * dim -> dim; keys `net.0.proj`, `net.2` (net.1 is diffusers' dropout slot)."""

    def __init__(self, dim: int, mult: int = 4, gated: bool = False):
        super().__init__()
        hidden = mult * dim
        self.net = nn.ModuleList([GELUProj(dim, hidden, gated), nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


# ----------------------------------------------------------------------------- conditioning


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """LayerNorm without affine parameters (PixArt / SD3 `norm1`, `norm2`, `norm_out`)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def timestep_features(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """t (B,) float -> (B, dim) [cos | sin] features (diffusers Timesteps, flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedder(nn.Module):
    """linear_1 -> act -> linear_2 (diffusers TimestepEmbedding / PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int, act: str):
        super().__init__()
        self.act = act
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear_1(x)
        h = F.silu(h) if self.act == "silu" else F.gelu(h, approximate="tanh")
        return self.linear_2(h)


class _TimestepOnly(nn.Module):
    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(freq_dim, dim, "silu")


class AdaLNSingle(nn.Module):
    """PixArt adaLN-single: t -> embedding (B, D) and one shared modulation (B, 6D) for every block."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.emb = _TimestepOnly(dim, freq_dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """extra (B, D): added to the timestep embedding before the shared modulation (a caption pool)."""
        feats = timestep_features(t, self.freq_dim).to(self.linear.weight.dtype)
        temb = self.emb.timestep_embedder(feats)  # (B, D)
        if extra is not None:
            temb = temb + extra
        return temb, self.linear(F.silu(temb))  # (B, D), (B, 6D)


class TimeTextEmbed(nn.Module):
    """SD3 `time_text_embed`: timestep embedding plus (optionally) a pooled text embedding, (B, D)."""

    def __init__(self, dim: int, freq_dim: int = 256, pooled_dim: int = 0):
        super().__init__()
        self.freq_dim = freq_dim
        self.timestep_embedder = MLPEmbedder(freq_dim, dim, "silu")
        self.text_embedder = MLPEmbedder(pooled_dim, dim, "silu") if pooled_dim else None

    def forward(self, t: Tensor, pooled: Tensor | None, extra: Tensor | None = None) -> Tensor:
        feats = timestep_features(t, self.freq_dim).to(self.timestep_embedder.linear_1.weight.dtype)
        temb = self.timestep_embedder(feats)
        if self.text_embedder is not None:
            if pooled is None:
                raise ValueError("this model needs `pooled` text embeddings (pooled_dim > 0)")
            temb = temb + self.text_embedder(pooled)
        return temb if extra is None else temb + extra


class AdaLNZero(nn.Module):
    """SD3 per-block modulation: SiLU -> Linear(D, n*D) of the timestep embedding; key `linear`."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(dim, n * dim)

    def forward(self, temb: Tensor) -> Tensor:
        return self.linear(F.silu(temb)).unflatten(1, (self.n, -1))  # (B, n, D)


# ----------------------------------------------------------------------------- patches and positions


class PatchEmbed(nn.Module):
    """(B, C_in, T, H, W) -> (B, T'*H'*W', D) tokens, t outer and w inner (key `proj`: a strided Conv3d;
    the seeds' per-frame Conv2d weights are this kernel with a temporal size of 1)."""

    def __init__(self, in_channels: int, dim: int, patch: list[int] | tuple[int, ...]):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=self.patch, stride=self.patch)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        for n, p, axis in zip(x.shape[2:], self.patch, "THW", strict=True):
            if n % p:
                raise ValueError(f"input {axis}={n} is not a multiple of patch size {p} ({tuple(x.shape)})")
        h = self.proj(x)  # (B, D, T', H', W')
        grid = (h.shape[2], h.shape[3], h.shape[4])
        return h.flatten(2).transpose(1, 2), grid


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """pos (L,) -> (L, dim) [sin | cos] with frequencies 10000^(-2i/dim), computed in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2))
    out = pos.double()[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=-1)


def sincos_2d(dim: int, pos_h: Tensor, pos_w: Tensor) -> Tensor:
    """(H*W, dim) float32 row-major; the first half encodes the column (w), the second the row (h), as
    PixArt / SD3 `get_2d_sincos_pos_embed` lay it out."""
    h, w = len(pos_h), len(pos_w)
    emb_w = sincos_1d(dim // 2, pos_w)[None].expand(h, w, -1)
    emb_h = sincos_1d(dim // 2, pos_h)[:, None].expand(h, w, -1)
    return torch.cat([emb_w, emb_h], dim=-1).reshape(h * w, dim).float()


def abs_pos_embed(
    kind: str, dim: int, h: int, w: int, base: int, interp: float, max_size: int, device: torch.device
) -> Tensor:
    """Per-frame 2D sin-cos table (H*W, D) for a grid of h x w patches.
    pixart: position i -> i / (h / base) / interp (any grid is stretched onto the training grid);
    sd3: the centre h x w crop of a max_size grid whose positions are i / (max_size / base) / interp."""
    if kind == "pixart":
        ph = torch.arange(h, device=device, dtype=torch.float64) / (h / base) / interp
        pw = torch.arange(w, device=device, dtype=torch.float64) / (w / base) / interp
    else:
        if h > max_size or w > max_size:
            raise ValueError(f"grid {h}x{w} exceeds the position table ({max_size}x{max_size} patches)")
        top, left = (max_size - h) // 2, (max_size - w) // 2
        ph = (top + torch.arange(h, device=device, dtype=torch.float64)) / (max_size / base) / interp
        pw = (left + torch.arange(w, device=device, dtype=torch.float64)) / (max_size / base) / interp
    return sincos_2d(dim, ph, pw)


def sinusoid_table(length: int | Tensor, dim: int, device: torch.device) -> Tensor:
    """(length, dim) interleaved sin/cos (AnimateDiff `PositionalEncoding`), for any length; or, given
    positions (L,), the rows of those positions: (L, dim)."""
    if isinstance(length, Tensor):
        pos = length.to(device=device, dtype=torch.float32)[:, None]
    else:
        pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(len(pos), dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class TemporalAdapter(nn.Module):
    """ExVideo's `positional_conv`: a 3x3x3 Conv3d over the token grid, initialised to the identity (centre
    tap = eye, the rest and the bias zero), so inserting it leaves a model's function unchanged. Replicate
    padding (ExVideo: reflect, which a one-frame image cannot take)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, padding=1, padding_mode="replicate")
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        w = self.conv.weight  # (D, D, 3, 3, 3)
        if w.is_meta:
            return
        w.zero_()
        w[:, :, 1, 1, 1] = torch.eye(w.shape[0], dtype=w.dtype)
        self.conv.bias.zero_()

    def forward(self, h: Tensor) -> Tensor:
        """h (B, T, H, W, D) -> same."""
        return self.conv(h.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
