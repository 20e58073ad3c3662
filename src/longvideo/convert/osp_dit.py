"""Open-Sora-Plan v1.2 `OpenSoraT2V` (config.json + state dict) -> our `VideoDiT` (family "full3d"), exactly.

Read from `opensora/models/diffusion/opensora/modeling_opensora.py` (tag v1.2.0); proven by the
`osp_v1_2_dit` parity fixture. Facts the translation relies on:
- `PatchEmbed2D` is a per-frame Conv2d (patch_size_t must be 1): our Conv3d with temporal size 1; with
  RoPE on there is no absolute position embedding;
- blocks are diffusers' `BasicTransformerBlock` with adaLN-single (a (6, D) table per block), 3D full
  self-attention with `RoPE3D` (head_dim split in equal t/h/w thirds, base 10000, positions divided by
  `interpolation_scale_{t,h,w}`), cross-attention to the projected caption, GELU(tanh) feed-forward;
- `PixArtAlphaTextProjection` caption_channels -> D; output: (2, D) table modulation, `proj_out`.

Config translation (OSP -> DiTConfig): num_layers, num_attention_heads -> num_heads, attention_head_dim ->
head_dim, in_channels, caption_channels -> text_dim, patch_size_t/patch_size -> patch_size (t, h, w),
norm_eps, interpolation_scale_{t,h,w} -> rope_scale. Asserted: norm_type ada_norm_single, use_rope,
cross_attention_dim = D, out_channels = in_channels, gelu-approximate, attention bias on, no affine norms.

Key map: our keys *are* OSP's (PixArt's) names; only `pos_embed.proj.weight` changes shape. Listed module by
module in `key_map`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longvideo.convert.dit_keymap import KeyMap, SourceConfig, load_dit, pixart_stem
from longvideo.models.dit import DiTConfig, VideoDiT

SOURCE = "Open-Sora-Plan v1.2 OpenSoraT2V"

# settings that do not change the weights or the outputs of inference
_NO_EFFECT = (
    "dropout", "norm_num_groups", "sample_size", "sample_size_t", "attention_mode", "upcast_attention",
    "use_linear_projection", "num_embeds_ada_norm",
)  # fmt: skip


def osp_dit_config(raw: dict) -> DiTConfig:
    """Our DiTConfig for an OpenSoraT2V config.json; one UserError lists everything we cannot express."""
    c = SourceConfig(raw, SOURCE)
    c.ignore(*_NO_EFFECT)
    layers, heads, head_dim = (
        c.integer("num_layers"),
        c.integer("num_attention_heads"),
        c.integer("attention_head_dim"),
    )
    dim = heads * head_dim
    in_ch = c.integer("in_channels")
    if c.get("out_channels") not in (None, in_ch):
        c.problem(f"out_channels={c.c['out_channels']} != in_channels={in_ch} (no learned variance in OSP)")
    c.expect("patch_size_t", 1, why="PatchEmbed2D embeds each frame")
    p = c.integer("patch_size")
    c.expect("norm_type", "ada_norm_single")
    c.expect("attention_type", "default")
    c.expect("use_rope", True, why="the absolute-position variant is not the released one")
    c.expect("activation_fn", "gelu-approximate")
    c.expect("attention_bias", True)
    c.expect("norm_elementwise_affine", False)
    c.expect("only_cross_attention", False)
    c.expect("double_self_attention", False)
    c.expect("num_vector_embeds", None)
    c.expect("use_additional_conditions", False, None)
    c.expect("downsampler", None, "", why="the downsampling variants are not released for v1.2")
    if c.get("cross_attention_dim") not in (None, dim):
        c.problem(f"cross_attention_dim={c.c['cross_attention_dim']} != heads x head_dim = {dim}")
    text_dim = c.integer("caption_channels")
    scale = [float(c.get(f"interpolation_scale_{a}") or 1.0) for a in "thw"]
    eps = float(c.get("norm_eps") or 1e-6)
    c.finish()
    return DiTConfig(
        family="full3d", in_channels=in_ch, num_layers=layers, num_heads=heads, head_dim=head_dim,
        text_dim=text_dim, patch_size=[1, p, p], norm_eps=eps, rope_scale=scale,
    )  # fmt: skip


def key_map(cfg: DiTConfig) -> KeyMap:
    """Every key of our model for `cfg`, with the OpenSoraT2V key it comes from."""
    km = pixart_stem(KeyMap(SOURCE, "osp-v1.2"))
    for i in range(cfg.num_layers):
        b = f"transformer_blocks.{i}"
        km.same(*(f"{b}.{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")))
        km.same(f"{b}.ff.net.0.proj", f"{b}.ff.net.2")
        km.add(f"{b}.scale_shift_table")
    return km


def load_osp_dit(raw_config: dict, sd: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> VideoDiT:
    """Our VideoDiT holding an OpenSoraT2V checkpoint (built on the meta device, loaded with assign=True)."""
    cfg = osp_dit_config(raw_config)
    return load_dit(cfg, sd, key_map(cfg), dtype)


__all__ = ["SOURCE", "key_map", "load_osp_dit", "osp_dit_config"]
