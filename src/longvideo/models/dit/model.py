"""`VideoDiT`: the video denoiser. One transformer, three block families (config.py), images and videos of
any size the patch grid allows, text conditioning, and image-to-video / continuation conditioning through
extra input channels.

    model = build_dit("tiny-full3d", device="cpu")
    out = model(x, t, text, text_mask)          # x (B, C, T, H, W) -> (B, out_channels, T, H, W)

Conditioning: `cond` (B, cond_channels, T, H, W) is concatenated after the noisy latents, e.g.
[masked-video latents | mask] where the mask channel marks the known frames (any set: the first frame, the
tail of the previous chunk, keyframes). Those channels' patch-embedding weights start at zero, so a model
inflated from a T2V checkpoint computes the same function until it learns to use them; cond=None is
all-zero, plain T2V.

A forward is three public steps, so that code outside the model (parallel/) can act between them, e.g.
split the tokens along frames after `embed` and gather them before `head`:

    h, text, c = model.embed(x, t, text, text_mask, cond, pooled)  # tokens (B, T*H*W, D), BlockInputs
    h = model.run_blocks(h, text, c)                               # the transformer blocks, U-ViT skips
    out = model.head(h, c)                                         # (B, out_channels, T, H, W)

`local_inputs(c, frames)` gives the BlockInputs of a share of the frames (positions, RoPE at them).
All attention runs through `AttentionOp` modules whose `attention_fn` (default: torch SDPA) can be
swapped from outside (`set_attention_fn`) without touching the blocks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from longvideo.models.dit.blocks import BlockInputs, PixArtBlock
from longvideo.models.dit.config import DiTConfig, dit_preset
from longvideo.models.dit.layers import (
    AdaLNSingle,
    AdaLNZero,
    AttentionFn,
    AttentionOp,
    MLPEmbedder,
    PatchEmbed,
    TemporalAdapter,
    TimeTextEmbed,
    abs_pos_embed,
    layer_norm,
    modulate,
)
from longvideo.models.dit.rope import Rope, rope_1d, rope_3d
from longvideo.models.dit.vchitect import ParallelBlock


class VideoDiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg.validate()
        d = cfg.dim
        self.pos_embed = PatchEmbed(cfg.in_channels + cfg.cond_channels, d, cfg.patch_size)
        # ExVideo's identity conv after the embedding (the motion family has one per motion attention)
        adapter = cfg.temporal_adapter and cfg.family != "motion"
        self.temporal_adapter = TemporalAdapter(d) if adapter else None
        # timestep (+ pooled text) -> temb (B, D); adaLN-single also makes the shared (B, 6D) modulation
        single = cfg.adaln == "single"
        self.adaln_single = AdaLNSingle(d, cfg.freq_dim) if single else None
        self.time_text_embed = None if single else TimeTextEmbed(d, cfg.freq_dim, cfg.pooled_dim)
        mlp = cfg.caption_proj == "mlp"
        self.caption_projection = MLPEmbedder(cfg.text_dim, d, "gelu_tanh") if mlp else None
        self.context_embedder = None if mlp else nn.Linear(cfg.text_dim, d)
        self.caption_pool = MLPEmbedder(d, d, "silu") if cfg.caption_pool else None
        n = cfg.num_layers
        if cfg.family == "parallel":
            blocks = [ParallelBlock(cfg, last=i == n - 1) for i in range(n)]
        else:
            blocks = [PixArtBlock(cfg, i) for i in range(n)]
        self.transformer_blocks = nn.ModuleList(blocks)
        self.long_connect_fc = nn.ModuleList([nn.Linear(d, d) for _ in range(cfg.uvit_skips)])
        # final layer: adaLN (shift, scale) -> Linear to the patch's output values
        self.scale_shift_table = nn.Parameter(torch.empty(2, d)) if single else None
        self.norm_out = None if single else AdaLNZero(d, 2)
        self.proj_out = nn.Linear(d, math.prod(cfg.patch_size) * cfg.out_channels)
        self.init_weights()

    # ------------------------------------------------------------------------- init

    @torch.no_grad()
    def init_weights(self) -> None:
        """PixArt's init (xavier Linears, N(0, 0.02) embedding MLPs, zero cross-attention output and final
        layer) plus zero for every branch added on top of an image model: motion modules, U-ViT skips,
        parallel temporal / cross outputs, conditioning channels. adaLN-zero starts every gate at zero.
        On the meta device there is nothing to initialise (weights get loaded with assign=True)."""
        if self.proj_out.weight.is_meta:
            return
        for name, p in self.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("scale_shift_table"):
                nn.init.normal_(p, std=p.shape[-1] ** -0.5)  # PixArt: randn(n, D) / sqrt(D)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.pos_embed.proj.weight  # (D, C + cond, pt, ph, pw), initialised like a Linear of the patch
        c = self.cfg.in_channels
        w[:, :c] = nn.init.xavier_uniform_(torch.empty_like(w[:, :c]).flatten(1)).view_as(w[:, :c])
        w[:, c:] = 0
        nn.init.zeros_(self.pos_embed.proj.bias)
        embedders = [self.adaln_single, self.time_text_embed, self.caption_projection, self.caption_pool]
        for e in (e for e in embedders if e is not None):
            for m in e.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        pool_out = None if self.caption_pool is None else self.caption_pool.linear_2
        zero: list[nn.Module | None] = [self.proj_out, pool_out, *self.long_connect_fc]
        for blk in self.transformer_blocks:
            if isinstance(blk, PixArtBlock):
                zero.append(blk.attn2.to_out[0])
                if blk.attn_temporal is not None:
                    zero.append(blk.attn_temporal.proj_out)
            else:
                a = blk.attn
                zero += [a.to_out_temporal, a.to_out_context, a.to_add_out_temporal]
        zero += [m for m in self.modules() if isinstance(m, AdaLNZero)]
        for m in (m for m in zero if m is not None):
            for p in m.parameters():
                nn.init.zeros_(p)

    # ------------------------------------------------------------------------- attention

    def attention_ops(self, kinds: Iterable[str] | None = None) -> list[AttentionOp]:
        ops = [m for m in self.modules() if isinstance(m, AttentionOp)]
        return ops if kinds is None else [op for op in ops if op.kind in set(kinds)]

    def set_attention_fn(self, fn: AttentionFn, kinds: Iterable[str] | None = None) -> None:
        """Route every attention (or those of the given kinds, see AttentionOp) through `fn`."""
        for op in self.attention_ops(kinds):
            op.attention_fn = fn

    # ------------------------------------------------------------------------- forward

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        text: Tensor,
        text_mask: Tensor | None = None,
        cond: Tensor | None = None,
        pooled: Tensor | None = None,
    ) -> Tensor:
        """x (B, C, T, H, W) noisy latents; t (B,) float model timesteps; text (B, L, text_dim) encoder
        states; text_mask (B, L), 1 = keep; cond (B, cond_channels, T, H, W) or None (= zeros);
        pooled (B, pooled_dim) for pooled_dim > 0. Returns (B, out_channels, T, H, W)."""
        h, text, c = self.embed(x, t, text, text_mask, cond, pooled)
        return self.head(self.run_blocks(h, text, c), c)

    def embed(
        self,
        x: Tensor,
        t: Tensor,
        text: Tensor,
        text_mask: Tensor | None = None,
        cond: Tensor | None = None,
        pooled: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, BlockInputs]:
        """forward's inputs -> video tokens h (B, T*H*W, D) in patches (t outer), projected text (B, L, D)
        (dual stream: one copy per frame, (B, T*L, D), frame outer) and the BlockInputs of the whole clip."""
        cfg = self.cfg
        b = x.shape[0]
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be (B, {cfg.in_channels}, T, H, W), got {tuple(x.shape)}")
        if cfg.cond_channels:
            if cond is None:
                cond = x.new_zeros(b, cfg.cond_channels, *x.shape[2:])
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("this model has no conditioning channels (cond_channels=0)")

        h, grid = self.pos_embed(x)  # (B, T*H*W, D) in patches
        if cfg.abs_pos_embed != "none":
            pe = abs_pos_embed(
                cfg.abs_pos_embed, cfg.dim, grid[1], grid[2],
                cfg.pos_embed_base, cfg.pos_embed_interp, cfg.pos_embed_max, x.device,
            )  # fmt: skip
            h = h + pe.to(h.dtype).repeat(grid[0], 1)  # the same table on every frame
        if self.temporal_adapter is not None:
            h = self.temporal_adapter(h.reshape(b, *grid, -1)).reshape(h.shape)

        proj = self.caption_projection if self.caption_projection is not None else self.context_embedder
        text = proj(text.to(h.dtype))  # (B, L, D)
        pool = None if self.caption_pool is None else self.caption_pool(_masked_mean(text, text_mask))

        t = t.expand(b) if t.ndim == 0 else t
        if self.adaln_single is not None:
            temb, t6 = self.adaln_single(t, pool)
        else:
            temb, t6 = self.time_text_embed(t, pooled, pool), None
        temb, t6 = temb.to(h.dtype), None if t6 is None else t6.to(h.dtype)
        if cfg.text_stream:  # one copy of the text per frame: (B, T*L, D)
            text = text[:, None].expand(-1, grid[0], -1, -1).flatten(1, 2)
        frames = torch.arange(grid[0], device=x.device)
        rope = self._rope(grid, frames)
        return h, text, BlockInputs(grid, temb, t6, self._text_mask(text_mask), rope, grid, frames)

    def run_blocks(self, h: Tensor, text: Tensor, c: BlockInputs) -> Tensor:
        """The transformer blocks (with U-ViT skips) on tokens h (B, T*H*W, D) of the grid c.grid -> same."""
        cfg = self.cfg
        skips, n, first_pop = [], cfg.uvit_skips, cfg.num_layers - cfg.uvit_skips
        for i, block in enumerate(self.transformer_blocks):
            if i >= first_pop:  # U-ViT: block L-1-j receives block j's output
                h = h + self.long_connect_fc[i - first_pop](skips.pop())
            h, text = block(h, text, c)
            if i < n:
                skips.append(h)
        return h

    def head(self, h: Tensor, c: BlockInputs) -> Tensor:
        """Final adaLN and projection of tokens h (B, T*H*W, D) of the grid c.grid, un-patchified ->
        (B, out_channels, T*pt, H*ph, W*pw). Per token: a share of the frames may go through it alone."""
        if self.norm_out is not None:
            shift, scale = self.norm_out(c.temb).unbind(1)
        else:
            shift, scale = (self.scale_shift_table[None] + c.temb[:, None]).unbind(1)
        h = modulate(layer_norm(h, self.cfg.norm_eps), shift[:, None], scale[:, None])
        return self.unpatchify(self.proj_out(h), c.grid)

    def local_inputs(self, c: BlockInputs, frames: Tensor) -> BlockInputs:
        """The BlockInputs of a share of c's frames: frames (T_local,) their indices in c (e.g. one rank's
        contiguous share of a clip split along frames). Same embeddings and text mask; the grid of the share,
        c's global grid, the share's clip positions and the RoPE at them (the rows of c's RoPE)."""
        frames = c.frames[frames.to(c.frames.device)]
        grid = (len(frames), *c.grid[1:])
        return dataclasses.replace(c, grid=grid, frames=frames, rope=self._rope(grid, frames))

    def unpatchify(self, h: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """(B, T*H*W, pt*ph*pw*C) patches, values ordered (pt, ph, pw, C) -> (B, C, T*pt, H*ph, W*pw)."""
        (pt, ph, pw), (t, hh, ww), c = self.cfg.patch_size, grid, self.cfg.out_channels
        h = h.reshape(h.shape[0], t, hh, ww, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return h.reshape(h.shape[0], c, t * pt, hh * ph, ww * pw)

    @staticmethod
    def _text_mask(text_mask: Tensor | None) -> Tensor | None:
        """(B, L) 1 = keep -> (B, 1, 1, L) bool. A prompt with no kept token attends to all of them, as the
        seeds' -10000 bias does, rather than to nothing (which SDPA backends answer differently)."""
        if text_mask is None:
            return None
        keep = text_mask.bool()
        keep = keep | ~keep.any(dim=-1, keepdim=True)
        return keep[:, None, None, :]

    def _rope(self, grid: tuple[int, int, int], frames: Tensor) -> Rope | None:
        """RoPE of the tokens of grid (T, H, W) whose frames sit at clip positions frames (T,)."""
        cfg, device = self.cfg, frames.device
        riflex = (cfg.rope_riflex_k, cfg.rope_riflex_frames) if cfg.rope_riflex_k else None
        if cfg.family == "full3d":
            theta, scale = cfg.rope_theta, cfg.rope_scale
            return rope_3d(grid, cfg.head_dim, theta, scale, device=device, riflex=riflex, frames=frames)
        if cfg.family == "parallel":
            theta, scale = cfg.temporal_rope_theta, cfg.temporal_rope_scale
            return rope_1d(frames, cfg.head_dim, theta, scale, device=device, riflex=riflex)
        return None


def build_dit(preset_or_cfg: str | DiTConfig, device: torch.device | str = "meta") -> VideoDiT:
    """A VideoDiT from a preset name or a config, built on `device` (meta: no memory, for loading with
    `load_state_dict(assign=True)` or counting parameters)."""
    cfg = dit_preset(preset_or_cfg) if isinstance(preset_or_cfg, str) else copy.deepcopy(preset_or_cfg)
    with torch.device(device):
        return VideoDiT(cfg)


def _masked_mean(text: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of (B, L, D) over the kept tokens of mask (B, L) (all of them when none is kept) -> (B, D)."""
    if mask is None:
        return text.mean(1)
    w = mask.to(text.dtype)
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))[..., None]  # (B, L, 1)
    return (text * w).sum(1) / w.sum(1)
