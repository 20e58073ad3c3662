"""Load EasyAnimate's `AutoencoderKLMagvit` (config + state dict) into our `CausalVAE`, exactly.

Read from EasyAnimate (commit d3b8bbb: `easyanimate/models/autoencoder_magvit.py`, `vae/ldm/models/
omnigen_enc_dec.py`, `vae/ldm/modules/vaemodules/*`); each fact is a config switch of ours, no EasyAnimate
forward code:

* `ResidualBlock3D`: GroupNorm(32, eps 1e-6) -> SiLU -> CausalConv3d k3 -> GroupNorm -> SiLU -> dropout ->
  CausalConv3d k3, plus a 1x1x1 `nn.Conv3d` shortcut on the input: our "3d" `ResBlock`. Without
  `spatial_group_norm` every GroupNorm gets (B, C, T, H, W), so its statistics span the frames it is given:
  `norm_over_time=True` (also for `conv_norm_out`);
* `SpatialDownsampler3D` (pad (0, 1, 0, 1), CausalConv3d k3 stride (1, 2, 2)): down "spatial_3d";
  `SpatialTemporalDownsampler3D` (same pad, stride 2): down "spacetime"; the last down block has none;
* `SpatialUpsampler3D` (nearest x2 in space, CausalConv3d k3): up "spatial_3d"; `SpatialTemporalUpsampler3D`
  (nearest x2 in space, CausalConv3d k3, *then* x2 in time by trilinear interpolation, the first frame kept
  when the clip starts the video): up "spacetime_conv_linear"; the last up block has none. EasyAnimate's
  `up_blocks.{k}` is our level n-1-k (ours are stored at their level, deepest processed first);
* `MidBlock3D` (resnet, attention, resnet for layers_per_block 2) with `Attention3D` ("3d"): single-head
  attention over all T*H*W tokens, GroupNorm over them, `nn.Linear` q/k/v/to_out (scale C^-0.5, residual):
  `mid_attention_over_time=True`; the (C, C) Linear weights become our (C, C, 1, 1) 1x1 convs;
* `quant_conv` / `post_quant_conv`: `nn.Conv3d` k1, our k1 causal convs; the posterior is diffusers'
  `DiagonalGaussianDistribution` (mean, logvar = chunk(2); logvar clamped to [-30, 20]), as ours;
* `CausalConv3d` pads time by replicating the first frame k_t - 1 times (its `padding_flag` 0, whole-clip
  mode): our "causal"; in the Slice-VAE mode (`slice_compression_vae`, flags 1/2) it pads
  ceil(((k_t - 1) + (1 - stride_w)) / 2) = 1 zero frame on each side for every k_t = 3 conv in this model:
  `time_padding="centered_zeros"`;
* Slice VAE (`Encoder/Decoder.forward` with `slice_compression_vae`): frame 0 alone when T is odd, then
  `mini_batch_encoder` frames at a time through the whole encoder, concatenated (then `quant_conv`); the
  decoder likewise in `mini_batch_decoder` latent frames, its `single_forward` running conv_in + mid block
  on the previous, current and next mini-batch and cropping back before the up blocks (feature sharing);
  the up-sampler's time doubling keeps the lone first frame single and doubles all frames of later
  mini-batches: `slice_encode`, `slice_decode`, `slice_feature_sharing` (models/vae/slicing.py).

Not expressible, and refused with ValueError: `cache_compression_vae` and `slice_mag_vae` (other chunking
modes), `spatial_group_norm` (per-frame norms, and it switches the time up-sampling to nearest), spatial
tiling, global-context blocks, other block / attention types, multi-head attention, a mid block with other
than two resnets. Slice mode and the 3d attention look ahead in time, so the converted VAE cannot stream;
it raises if given a `StreamState`.

Key map (EasyAnimate -> ours; `.weight`/`.bias` of each; ours gets `.conv` where it is a causal conv and
`.norm` where it is a `Norm`):

    encoder.conv_in, {en,de}coder.conv_out, decoder.conv_in   same path
    encoder.down_blocks.{i}.convs.{j}.X                       encoder.down.{i}.block.{j}.X
    decoder.up_blocks.{k}.convs.{j}.X                         decoder.up.{n-1-k}.block.{j}.X
        X in norm1 / conv1 / norm2 / conv2, and shortcut -> nin_shortcut
    encoder.down_blocks.{i}.downsampler.conv                  encoder.down.{i}.resample.conv
    decoder.up_blocks.{k}.upsampler.conv                      decoder.up.{n-1-k}.resample.conv
    {en,de}coder.mid_block.convs.{0,1}                        {en,de}coder.mid.block_{1,2}
    {en,de}coder.mid_block.attentions.0.group_norm            {en,de}coder.mid.attn_1.norm
    {en,de}coder.mid_block.attentions.0.to_{q,k,v,out}        {en,de}coder.mid.attn_1.{q,k,v,proj_out}
    {en,de}coder.conv_norm_out                                {en,de}coder.norm_out
    quant_conv, post_quant_conv                               same path
"""

from __future__ import annotations

import ast
from typing import Any

import torch
from torch import Tensor

from longvideo.convert.keymap import apply_module_map, load_on_meta
from longvideo.models.vae.model import CausalVAE, VAEConfig

# AutoencoderKLMagvit.__init__ defaults (commit d3b8bbb), for keys a config leaves out; the block type lists
# have no usable default (None)
EA_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "use_gc_blocks": None,
    "down_block_types": None,
    "up_block_types": None,
    "mid_block_type": "MidBlock3D",
    "mid_block_use_attention": True,
    "mid_block_attention_type": "3d",
    "mid_block_num_attention_heads": 1,
    "layers_per_block": 2,
    "act_fn": "silu",
    "num_attention_heads": 1,  # only the attention down / up blocks use it (refused below)
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.1825,
    "slice_mag_vae": True,
    "slice_compression_vae": False,
    "cache_compression_vae": False,
    "use_tiling": False,
    "use_tiling_encoder": False,
    "use_tiling_decoder": False,
    "mini_batch_encoder": 9,
    "mini_batch_decoder": 3,
    "upcast_vae": False,  # a dtype choice: the caller picks the dtype here
    "spatial_group_norm": False,
    "tile_sample_min_size": 384,  # used only with tiling (refused)
    "tile_overlap_factor": 0.25,
}

# EasyAnimate block -> (our block kind, our resampler kind, or None when the block has no resampler)
_DOWN = {
    "DownBlock3D": ("3d", None),
    "SpatialDownBlock3D": ("3d", "spatial_3d"),
    "SpatialTemporalDownBlock3D": ("3d", "spacetime"),
}
_UP = {"SpatialUpBlock3D": ("3d", "spatial_3d"), "SpatialTemporalUpBlock3D": ("3d", "spacetime_conv_linear")}


# ----------------------------------------------------------------------------- config


def _block_types(value: Any, key: str, problems: list[str]) -> list[str]:
    """EasyAnimate accepts a list or a Python tuple literal in a string (it evals it; we parse it)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            problems.append(f"{key}={value!r} is not a list of block names")
            return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        problems.append(f"{key}={value!r} (a list of block names is required)")
        return []
    return list(value)


def _levels(
    names: list[str], table: dict[str, tuple[str, str | None]], key: str, problems: list[str]
) -> tuple[list[str], list[str]]:
    """Block kinds and resampler kinds per EasyAnimate block; the last block never resamples."""
    unknown = [n for n in names if n not in table]
    if unknown:
        problems.append(f"{key} {unknown} (supported: {sorted(table)})")
    kinds = [table.get(n, ("3d", None))[0] for n in names]
    resample = [table.get(n, ("3d", None))[1] or "" for n in names]
    if resample:
        resample[-1] = ""  # EasyAnimate builds the last block with add_down/upsample=False
    return kinds, resample


def easyanimate_vae_config(cfg_json: dict) -> VAEConfig:
    """Our `VAEConfig` for an EasyAnimate `AutoencoderKLMagvit` constructor config (a config.json dict).

    Raises ValueError naming every setting our VAE cannot express.
    """
    extra = sorted(k for k in cfg_json if not k.startswith("_") and k not in EA_DEFAULTS)
    c = {**EA_DEFAULTS, **{k: v for k, v in cfg_json.items() if not k.startswith("_")}}
    problems: list[str] = [f"unknown config key(s) {extra}"] if extra else []
    mult = list(c["ch_mult"])
    n = len(mult)
    down_names = _block_types(c["down_block_types"], "down_block_types", problems)
    up_names = _block_types(c["up_block_types"], "up_block_types", problems)
    for key, names in (("down_block_types", down_names), ("up_block_types", up_names)):
        if len(names) != n:
            problems.append(f"{key} has {len(names)} entries for {n} levels (ch_mult)")
    enc, down = _levels(down_names, _DOWN, "down_block_types", problems)
    dec_ea, up_ea = _levels(up_names, _UP, "up_block_types", problems)
    chs_rev = [c["ch"] * m for m in reversed(mult)]
    for k, name in enumerate(up_names[:-1]):  # its up-sampler is built for the block's input channels
        if name == "SpatialUpBlock3D" and k > 0 and chs_rev[k - 1] != chs_rev[k]:
            problems.append(f"up_block_types[{k}]=SpatialUpBlock3D changes channels before up-sampling")
    if c["mid_block_type"] != "MidBlock3D":
        problems.append(f"mid_block_type={c['mid_block_type']!r} (only 'MidBlock3D')")
    if c["layers_per_block"] != 2:  # MidBlock3D holds layers_per_block resnets; ours holds two
        problems.append(f"layers_per_block={c['layers_per_block']} (the mid block must hold 2 resnets)")
    if c["mid_block_use_attention"] and c["mid_block_attention_type"] != "3d":
        problems.append(f"mid_block_attention_type={c['mid_block_attention_type']!r} (only '3d')")
    if c["mid_block_num_attention_heads"] != 1:
        problems.append(f"mid_block_num_attention_heads={c['mid_block_num_attention_heads']} (only 1)")
    if str(c["act_fn"]).lower() not in ("silu", "swish"):
        problems.append(f"act_fn={c['act_fn']!r} (only 'silu')")
    if c["in_channels"] != c["out_channels"]:
        problems.append(f"in_channels={c['in_channels']} != out_channels={c['out_channels']}")
    if c["use_gc_blocks"] is not None and any(c["use_gc_blocks"]):
        problems.append(f"use_gc_blocks={c['use_gc_blocks']} (global-context blocks are not supported)")
    if c["spatial_group_norm"]:
        problems.append("spatial_group_norm=True (per-frame norms with nearest time up-sampling)")
    if c["cache_compression_vae"]:
        problems.append("cache_compression_vae=True (the cached chunking mode is not supported)")
    slice_mode = bool(c["slice_compression_vae"])
    if c["slice_mag_vae"] and not slice_mode and not c["cache_compression_vae"]:
        problems.append("slice_mag_vae=True (the independent-chunk mode is not supported)")
    for key in ("use_tiling", "use_tiling_encoder", "use_tiling_decoder"):
        if c[key]:
            problems.append(f"{key}=True (EasyAnimate's spatial tiling is not reproduced)")
    if problems:
        raise ValueError("cannot express this EasyAnimate AutoencoderKLMagvit config: " + "; ".join(problems))
    cfg = VAEConfig(
        in_channels=c["in_channels"],
        latent_channels=c["latent_channels"],
        base_channels=c["ch"],
        channel_mult=mult,
        num_res_blocks=c["layers_per_block"],
        encoder_conv_in="3d",
        encoder_blocks=enc,
        decoder_blocks=dec_ea[::-1],  # EasyAnimate's up_blocks.{k} is our level n-1-k
        down=down,
        up=up_ea[::-1],
        mid_attention=bool(c["mid_block_use_attention"]),
        mid_attention_over_time=True,
        norm_groups=c["norm_num_groups"],
        norm_over_time=True,
        time_padding="centered_zeros" if slice_mode else "causal",
        slice_encode=c["mini_batch_encoder"] if slice_mode else 0,
        slice_decode=c["mini_batch_decoder"] if slice_mode else 0,
        slice_feature_sharing=slice_mode,
        dropout=0.0,
        scaling_factor=float(c["scaling_factor"]),
        shift_factor=0.0,
    )
    try:
        return cfg.validate()
    except ValueError as e:
        raise ValueError(f"cannot express this EasyAnimate AutoencoderKLMagvit config: {e}") from e


# ----------------------------------------------------------------------------- the key map


def _resblock(ours: str, theirs: str, cin: int, cout: int) -> list[tuple[str, str]]:
    names = [("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2")]
    names += [("nin_shortcut", "shortcut")] if cin != cout else []
    return [(f"{ours}.{a}", f"{theirs}.{b}") for a, b in names]


def _mid(ours: str, theirs: str, ch: int, attention: bool) -> list[tuple[str, str]]:
    pairs = _resblock(f"{ours}.block_1", f"{theirs}.convs.0", ch, ch)
    pairs += _resblock(f"{ours}.block_2", f"{theirs}.convs.1", ch, ch)
    if attention:
        a, b = f"{ours}.attn_1", f"{theirs}.attentions.0"
        pairs.append((f"{a}.norm", f"{b}.group_norm"))
        names = (("q", "q"), ("k", "k"), ("v", "v"), ("proj_out", "out"))
        pairs += [(f"{a}.{x}", f"{b}.to_{y}") for x, y in names]
    return pairs


def module_map(cfg: VAEConfig) -> list[tuple[str, str]]:
    """(our module path, EasyAnimate parameter-owning module path) for every module with parameters."""
    chs = [cfg.base_channels * m for m in cfg.channel_mult]
    n, nb = len(chs), cfg.num_res_blocks
    pairs = [("encoder.conv_in", "encoder.conv_in")]
    cin = chs[0]
    for i in range(n):
        for j in range(nb):
            theirs = f"encoder.down_blocks.{i}.convs.{j}"
            pairs += _resblock(f"encoder.down.{i}.block.{j}", theirs, cin, chs[i])
            cin = chs[i]
        if cfg.down[i]:
            pairs.append((f"encoder.down.{i}.resample.conv", f"encoder.down_blocks.{i}.downsampler.conv"))
    pairs += _mid("encoder.mid", "encoder.mid_block", cin, cfg.mid_attention)
    pairs += [("encoder.norm_out", "encoder.conv_norm_out"), ("encoder.conv_out", "encoder.conv_out")]
    pairs += [("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")]
    pairs += [("decoder.conv_in", "decoder.conv_in")]
    pairs += _mid("decoder.mid", "decoder.mid_block", chs[-1], cfg.mid_attention)
    cin = chs[-1]
    for i in reversed(range(n)):
        k = n - 1 - i  # EasyAnimate's index: its up_blocks run from the deepest level
        for j in range(nb + 1):
            theirs = f"decoder.up_blocks.{k}.convs.{j}"
            pairs += _resblock(f"decoder.up.{i}.block.{j}", theirs, cin, chs[i])
            cin = chs[i]
        if cfg.up[i]:
            pairs.append((f"decoder.up.{i}.resample.conv", f"decoder.up_blocks.{k}.upsampler.conv"))
    pairs += [("decoder.norm_out", "decoder.conv_norm_out"), ("decoder.conv_out", "decoder.conv_out")]
    return pairs


def _fit(src: Tensor, shape: torch.Size, skey: str, tkey: str) -> Tensor:
    """The source tensor in the target's shape: a copy, or an (O, I) Linear weight as an (O, I, 1, 1) conv."""
    if src.shape == shape:
        return src.detach().clone()
    if src.dim() == 2 and tuple(shape) == (*src.shape, 1, 1):
        return src.detach()[:, :, None, None].clone()  # a Linear over channels is a 1x1 conv
    raise ValueError(f"shape mismatch: {skey} {tuple(src.shape)} cannot become {tkey} {tuple(shape)}")


def convert_easyanimate_vae_state_dict(sd: dict[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """Our state dict from an AutoencoderKLMagvit state dict (its own key layout) for `cfg`.

    Every source key is consumed exactly once and every target key produced; raises ValueError listing
    missing / unused source keys and shape mismatches. Tensors keep the source's dtype and device.
    """
    with torch.device("meta"):
        model = CausalVAE(cfg)
    return apply_module_map(sd, model, module_map(cfg), _fit, "EasyAnimate VAE")


# ----------------------------------------------------------------------------- loading


def load_easyanimate_vae(
    cfg_json: dict, sd: dict[str, Tensor], dtype: torch.dtype = torch.float32
) -> CausalVAE:
    """Our `CausalVAE` holding an AutoencoderKLMagvit's weights (any stored dtype, cast to `dtype`).

    Built on the meta device; the converted tensors become its parameters (no random init is spent).
    """
    cfg = easyanimate_vae_config(cfg_json)
    return load_on_meta(cfg, convert_easyanimate_vae_state_dict(sd, cfg), dtype)


__all__ = [
    "EA_DEFAULTS",
    "convert_easyanimate_vae_state_dict",
    "easyanimate_vae_config",
    "load_easyanimate_vae",
    "module_map",
]
