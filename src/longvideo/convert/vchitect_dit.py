"""Vchitect-2.0 `VchitectXLTransformerModel` (config.json + state dict) -> our "parallel" `VideoDiT`, exactly.

Read from Vchitect-2.0 `models/{VchitectXL,blocks,attention}.py` (HEAD 299618fe); proven by the
`vchitect_2_dit` parity fixture. The model is SD3's MM-DiT (per-frame patch Conv2d + SD3 cropped sin-cos
table, `context_embedder`, timestep + pooled-text embedding, adaLN-Zero for video and text, the last block
`context_pre_only`) whose attention sums a spatial (joint with text), a temporal (1D RoPE over frames) and a
cross branch (`VchitectAttnProcessor`).

Config translation (Vchitect -> DiTConfig): num_layers, num_attention_heads -> num_heads,
attention_head_dim -> head_dim, in_channels, joint_attention_dim -> text_dim, pooled_projection_dim ->
pooled_dim, sample_size / patch_size -> pos_embed_base, pos_embed_max_size -> pos_embed_max; fixed:
text_stream, adaln "zero", caption_proj "linear", abs_pos_embed "sd3". Asserted: caption_projection_dim = D,
out_channels = in_channels.

Key map: ours = Vchitect's names, with four value changes (the rest are listed module by module):
- `pos_embed.proj.weight` Conv2d -> Conv3d (temporal size 1); the stored `pos_embed.pos_embed` table is
  checked against the one we compute and consumed;
- SD3's `AdaLayerNormContinuous` (`norm_out`, and the last block's `norm1_context`) emits (scale, shift),
  ours (shift, scale): the two halves of its Linear swap;
- the processor computes `to_out.0(1.1 * spatial + to_out_context(cross))` (and `to_add_out` likewise for
  the text): the 1.1 is folded into `to_out.0.weight` / `to_add_out.weight` and divided out of
  `to_out_context` (weight and bias), so our branches simply add;
- the last block's text outputs are discarded by Vchitect (`context_pre_only`), so its `add_q_proj` and
  `to_add_out_temporal` are consumed without a target (our last block does not compute them).
The released code assumes batch 1 and takes frames first, (1, F, C, H, W); ours takes (B, C, T, H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor

from longvideo.convert.dit_keymap import KeyMap, SourceConfig, conv2d_as_3d, load_dit, table_check
from longvideo.models.dit import DiTConfig, VideoDiT
from longvideo.models.dit.layers import abs_pos_embed

SOURCE = "Vchitect-2.0 VchitectXLTransformerModel"
SPATIAL_SCALE = 1.1  # VchitectAttnProcessor: hidden = 1.1 * spatial + to_out_context(cross)


def vchitect_dit_config(raw: dict) -> DiTConfig:
    """Our DiTConfig for a VchitectXLTransformerModel config.json; one UserError lists what we cannot
    express."""
    c = SourceConfig(raw, SOURCE)
    c.ignore("tp_size", "dropout")
    layers, heads, head_dim = (
        c.integer(k) for k in ("num_layers", "num_attention_heads", "attention_head_dim")
    )
    dim = heads * head_dim
    in_ch, p, size = c.integer("in_channels"), c.integer("patch_size"), c.integer("sample_size")
    if c.get("out_channels") not in (None, in_ch):
        c.problem(f"out_channels={c.c['out_channels']} != in_channels={in_ch}")
    if c.get("caption_projection_dim") != dim:
        c.problem(f"caption_projection_dim={c.c.get('caption_projection_dim')} != heads x head_dim = {dim}")
    text_dim, pooled = c.integer("joint_attention_dim"), c.integer("pooled_projection_dim")
    max_size = c.integer("pos_embed_max_size")
    c.finish()
    return DiTConfig(
        family="parallel", in_channels=in_ch, num_layers=layers, num_heads=heads, head_dim=head_dim,
        patch_size=[1, p, p], text_dim=text_dim, text_stream=True, adaln="zero", caption_proj="linear",
        pooled_dim=pooled, abs_pos_embed="sd3", pos_embed_base=size // p, pos_embed_max=max_size,
    )  # fmt: skip


def swap_halves(w: Tensor) -> Tensor:
    """SD3's AdaLayerNormContinuous emits (scale, shift); ours (shift, scale)."""
    return torch.cat(w.chunk(2, dim=0)[::-1], dim=0)


def _times(s: float):
    return lambda w: w * s


def key_map(cfg: DiTConfig) -> KeyMap:
    """Every key of our model for `cfg`, with the VchitectXLTransformerModel key (and change) behind it."""
    km = KeyMap(SOURCE, "vchitect-2")
    km.add("pos_embed.proj.weight", transform=conv2d_as_3d)
    km.add("pos_embed.proj.bias")
    size, base = cfg.pos_embed_max, cfg.pos_embed_base

    def table(n: int) -> Tensor:
        return abs_pos_embed("sd3", cfg.dim, size, size, base, 1.0, size, torch.device("cpu"))[:n]

    km.consume("pos_embed.pos_embed", table_check(table, "SD3 sin-cos table", rows=size * size))
    km.same(
        "context_embedder", "proj_out", *(f"time_text_embed.{e}.linear_{j}"
        for e in ("timestep_embedder", "text_embedder") for j in (1, 2)),
    )  # fmt: skip
    km.add("norm_out.linear.weight", transform=swap_halves)
    km.add("norm_out.linear.bias", transform=swap_halves)
    for i in range(cfg.num_layers):
        b, last = f"transformer_blocks.{i}", i == cfg.num_layers - 1
        a = f"{b}.attn"
        km.same(f"{b}.norm1.linear", f"{b}.ff.net.0.proj", f"{b}.ff.net.2")
        ctx = swap_halves if last else None  # context_pre_only: AdaLayerNormContinuous
        km.add(f"{b}.norm1_context.linear.weight", transform=ctx)
        km.add(f"{b}.norm1_context.linear.bias", transform=ctx)
        km.same(*(f"{a}.{p}" for p in (
            "to_q", "to_k", "to_v", "to_q_temp", "to_k_temp", "to_v_temp", "to_q_cross",
            "add_k_proj", "add_v_proj", "to_out_temporal",
        )))  # fmt: skip
        km.add(f"{a}.to_out.0.weight", transform=_times(SPATIAL_SCALE))
        km.add(f"{a}.to_out.0.bias")
        km.add(f"{a}.to_out_context.weight", transform=_times(1 / SPATIAL_SCALE))
        km.add(f"{a}.to_out_context.bias", transform=_times(1 / SPATIAL_SCALE))
        if last:  # the text's outputs of the last block are discarded
            for p in ("add_q_proj", "to_add_out_temporal"):
                km.consume(f"{a}.{p}.weight")
                km.consume(f"{a}.{p}.bias")
            continue
        km.same(
            f"{a}.add_q_proj",
            f"{a}.to_add_out_temporal",
            f"{b}.ff_context.net.0.proj",
            f"{b}.ff_context.net.2",
        )
        km.add(f"{a}.to_add_out.weight", transform=_times(SPATIAL_SCALE))
        km.add(f"{a}.to_add_out.bias")
    return km


def load_vchitect_dit(
    raw_config: dict, sd: dict[str, Tensor], dtype: torch.dtype = torch.float32
) -> VideoDiT:
    """Our VideoDiT holding a VchitectXLTransformerModel checkpoint (meta device, assign=True)."""
    cfg = vchitect_dit_config(raw_config)
    return load_dit(cfg, sd, key_map(cfg), dtype)


__all__ = ["SOURCE", "key_map", "load_vchitect_dit", "swap_halves", "vchitect_dit_config"]
