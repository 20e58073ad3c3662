"""Load Open-Sora-Plan v1.2's `CausalVAEModel` (config + state dict) into our `CausalVAE`, exactly.

Our blocks express OSP's numerics through config switches (no OSP-specific forward code):

* `norm_over_time=True`: OSP's `Normalize` is GroupNorm(32, eps 1e-6) applied to (B, C, T, H, W), so its
  statistics span all frames (in 3D ResBlocks, the mid attention, and both `norm_out`s);
* `norm_over_time_in_2d_blocks=False`: `ResnetBlock2D` runs under `video_to_image`, frame by frame, so its
  norms see one frame (a 2D block with 5D GroupNorm would not be OSP);
* `up="spacetime_trilinear"` for `Spatial2xTime2x3DUpsample` (frame 0 x2 trilinear in space only, frames
  1.. x2 trilinear in space and time, then a causal 3x3x3 conv); `SpatialUpsample2x` (nearest x2, then a
  (1, 3, 3) causal conv, i.e. a per-frame 3x3 conv) is our "spatial";
* `Downsample` (Conv2d k3 s2, zero pad (0, 1, 0, 1), per frame) is our "spatial" down,
  `Spatial2xTime2x3DDownsample` (same pad, causal conv k3 s2) our "spacetime";
* `AttnBlock3DFix` (per-frame single-head attention, scale C^-0.5, 1x1x1 causal q/k/v/proj_out) is our
  `FrameAttention`; its (C, C, 1, 1, 1) kernels become (C, C, 1, 1).

Two of these (GroupNorm over time, trilinear time up-sampling) look at the whole clip, so the converted
VAE cannot stream; it raises if given a `StreamState`. Scaling: OSP's wrapper multiplies latents by 0.18215.

Key map (OSP -> ours; `.weight`/`.bias` of each; `[.conv]` where the OSP or our module is a causal conv,
`.norm` where ours is a `Norm`):

    encoder.conv_in[.conv]                              encoder.conv_in[.conv]
    {en,de}coder.{down,up}.{i}.block.{j}.X[.conv]       same path, X in norm1/conv1/norm2/conv2/nin_shortcut
    encoder.down.{i}.downsample.conv[.conv]             encoder.down.{i}.resample.conv[.conv]
    decoder.up.{i}.upsample.conv.conv                   decoder.up.{i}.resample.conv[.conv]
    {en,de}coder.mid.{block_1,block_2}.X.conv           same path
    {en,de}coder.mid.attn_1.{q,k,v,proj_out}.conv       {en,de}coder.mid.attn_1.{q,k,v,proj_out}
    {en,de}coder.mid.attn_1.norm, {en,de}coder.norm_out same path + .norm
    {en,de}coder.conv_out.conv, decoder.conv_in.conv, {quant,post_quant}_conv.conv: same path
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from longvideo.convert.keymap import apply_module_map, load_on_meta
from longvideo.models.vae.model import CausalVAE, VAEConfig

# CausalVAEModel.__init__ defaults (v1.2.0), for keys a config leaves out
OSP_DEFAULTS: dict[str, Any] = {
    "hidden_size": 128,
    "z_channels": 4,
    "hidden_size_mult": [1, 2, 4, 4],
    "attn_resolutions": [],
    "dropout": 0.0,
    "resolution": 256,
    "double_z": True,
    "embed_dim": 4,
    "num_res_blocks": 2,
    "q_conv": "CausalConv3d",
    "encoder_conv_in": "CausalConv3d",
    "encoder_conv_out": "CausalConv3d",
    "encoder_attention": "AttnBlock3D",
    "encoder_resnet_blocks": ["ResnetBlock3D"] * 4,
    "encoder_spatial_downsample": ["SpatialDownsample2x", "SpatialDownsample2x", "SpatialDownsample2x", ""],
    "encoder_temporal_downsample": ["", "TimeDownsample2x", "TimeDownsample2x", ""],
    "encoder_mid_resnet": "ResnetBlock3D",
    "decoder_conv_in": "CausalConv3d",
    "decoder_conv_out": "CausalConv3d",
    "decoder_attention": "AttnBlock3D",
    "decoder_resnet_blocks": ["ResnetBlock3D"] * 4,
    "decoder_spatial_upsample": ["", "SpatialUpsample2x", "SpatialUpsample2x", "SpatialUpsample2x"],
    "decoder_temporal_upsample": ["", "", "TimeUpsample2x", "TimeUpsample2x"],
    "decoder_mid_resnet": "ResnetBlock3D",
    "use_quant_layer": True,
}
OSP_SCALING_FACTOR = 0.18215  # CausalVAEModelWrapper's hard-coded latent scale (no shift)

# OSP class name -> our kind; each OSP module's weights sit at a fixed place (see `_osp_conv`)
_BLOCKS = {"ResnetBlock2D": "2d", "ResnetBlock3D": "3d"}
_CONV_IN = {"Conv2d": "2d", "CausalConv3d": "3d"}
_DOWN = {"": "", "Downsample": "spatial", "Spatial2xTime2x3DDownsample": "spacetime"}
_UP = {"": "", "SpatialUpsample2x": "spatial", "Spatial2xTime2x3DUpsample": "spacetime_trilinear"}


# ----------------------------------------------------------------------------- config


def _translate(names: list[str], table: dict[str, str], what: str, problems: list[str]) -> list[str]:
    unknown = [n for n in names if n not in table]
    if unknown:
        problems.append(f"{what} {unknown} (supported: {sorted(k for k in table if k)})")
    return [table.get(n, "") for n in names]


def osp_vae_config(cfg_json: dict) -> VAEConfig:
    """Our `VAEConfig` for an OSP `CausalVAEModel` constructor config (a config.json dict).

    Raises ValueError naming every setting our VAE cannot express.
    """
    known = set(OSP_DEFAULTS)
    extra = sorted(k for k in cfg_json if not k.startswith("_") and k not in known)
    c = {**OSP_DEFAULTS, **{k: v for k, v in cfg_json.items() if not k.startswith("_")}}
    mult = list(c["hidden_size_mult"])
    n = len(mult)
    problems: list[str] = [f"unknown config key(s) {extra}"] if extra else []
    for key in (
        "encoder_resnet_blocks",
        "encoder_spatial_downsample",
        "encoder_temporal_downsample",
        "decoder_resnet_blocks",
        "decoder_spatial_upsample",
        "decoder_temporal_upsample",
    ):
        if len(c[key]) != n:
            problems.append(f"{key} has {len(c[key])} entries for {n} levels")
    for key in ("encoder_temporal_downsample", "decoder_temporal_upsample"):
        if any(c[key]):
            problems.append(f"{key}={list(c[key])} (separate temporal resamplers are not supported)")
    if c["attn_resolutions"]:
        res = list(c["attn_resolutions"])
        problems.append(f"attn_resolutions={res} (only the mid attention is supported)")
    if not c["double_z"]:
        problems.append("double_z=False (the encoder must output mean and log-variance)")
    if c["embed_dim"] != c["z_channels"]:
        problems.append(f"embed_dim={c['embed_dim']} != z_channels={c['z_channels']}")
    if mult and mult[0] != 1:
        problems.append(f"hidden_size_mult[0]={mult[0]} (conv_in must output hidden_size = the first level)")
    for key in ("q_conv", "encoder_conv_out", "decoder_conv_in", "decoder_conv_out"):
        if c[key] != "CausalConv3d":
            problems.append(f"{key}={c[key]!r} (only 'CausalConv3d')")
    for key in ("encoder_mid_resnet", "decoder_mid_resnet"):
        if c[key] != "ResnetBlock3D":
            problems.append(f"{key}={c[key]!r} (only 'ResnetBlock3D')")
    for key in ("encoder_attention", "decoder_attention"):
        if c[key] != "AttnBlock3DFix":  # AttnBlock3D reshapes (B, C, T, ...) without moving T: not per frame
            problems.append(f"{key}={c[key]!r} (only 'AttnBlock3DFix')")
    conv_in = _translate([c["encoder_conv_in"]], _CONV_IN, "encoder_conv_in", problems)[0]
    enc = _translate(list(c["encoder_resnet_blocks"]), _BLOCKS, "encoder_resnet_blocks", problems)
    dec = _translate(list(c["decoder_resnet_blocks"]), _BLOCKS, "decoder_resnet_blocks", problems)
    down = _translate(list(c["encoder_spatial_downsample"]), _DOWN, "encoder_spatial_downsample", problems)
    up = _translate(list(c["decoder_spatial_upsample"]), _UP, "decoder_spatial_upsample", problems)
    if down and down[-1]:  # OSP feeds the last level's block output, not its downsample, to the mid block
        problems.append("a downsampler after the last encoder level (OSP computes it and ignores it)")
    if problems:
        raise ValueError("cannot express this Open-Sora-Plan CausalVAEModel config: " + "; ".join(problems))
    cfg = VAEConfig(
        in_channels=3,
        latent_channels=c["z_channels"],
        base_channels=c["hidden_size"],
        channel_mult=mult,
        num_res_blocks=c["num_res_blocks"],
        encoder_conv_in=conv_in,
        encoder_blocks=enc,
        decoder_blocks=dec,
        down=down,
        up=up,
        mid_attention=True,
        norm_groups=32,  # OSP's Normalize: GroupNorm(32, eps=1e-6, affine)
        norm_over_time=True,
        norm_over_time_in_2d_blocks=False,
        dropout=float(c["dropout"]),
        scaling_factor=OSP_SCALING_FACTOR,
        shift_factor=0.0,
    )
    try:
        return cfg.validate()
    except ValueError as e:
        raise ValueError(f"cannot express this Open-Sora-Plan CausalVAEModel config: {e}") from e


# ----------------------------------------------------------------------------- the key map


def _osp_conv(path: str, causal: bool) -> str:
    """OSP's CausalConv3d holds its nn.Conv3d at `.conv`; its Conv2d modules hold their weights directly."""
    return f"{path}.conv" if causal else path


def _resblock(path: str, kind: str, cin: int, cout: int) -> list[tuple[str, str]]:
    causal = kind == "3d"
    names = ["conv1", "conv2"] + (["nin_shortcut"] if cin != cout else [])
    return [(f"{path}.{x}", f"{path}.{x}") for x in ("norm1", "norm2")] + [
        (f"{path}.{x}", _osp_conv(f"{path}.{x}", causal)) for x in names
    ]


def _mid(path: str, ch: int) -> list[tuple[str, str]]:
    pairs = [*_resblock(f"{path}.block_1", "3d", ch, ch), *_resblock(f"{path}.block_2", "3d", ch, ch)]
    a = f"{path}.attn_1"
    pairs.append((f"{a}.norm", f"{a}.norm"))
    return pairs + [(f"{a}.{x}", f"{a}.{x}.conv") for x in ("q", "k", "v", "proj_out")]


def module_map(cfg: VAEConfig) -> list[tuple[str, str]]:
    """(our module path, OSP parameter-owning module path) for every module with parameters."""
    chs = [cfg.base_channels * m for m in cfg.channel_mult]
    n, nb = len(chs), cfg.num_res_blocks
    pairs = [("encoder.conv_in", _osp_conv("encoder.conv_in", cfg.encoder_conv_in == "3d"))]
    cin = chs[0]
    for i in range(n):
        for j in range(nb):
            pairs += _resblock(f"encoder.down.{i}.block.{j}", cfg.encoder_blocks[i], cin, chs[i])
            cin = chs[i]
        if cfg.down[i]:
            causal = cfg.down[i] == "spacetime"  # Spatial2xTime2x3DDownsample; "spatial" is a Conv2d
            theirs = _osp_conv(f"encoder.down.{i}.downsample.conv", causal)
            pairs.append((f"encoder.down.{i}.resample.conv", theirs))
    pairs += _mid("encoder.mid", cin)
    pairs += [("encoder.norm_out", "encoder.norm_out"), ("encoder.conv_out", "encoder.conv_out.conv")]
    pairs += [("quant_conv", "quant_conv.conv"), ("post_quant_conv", "post_quant_conv.conv")]
    pairs += [("decoder.conv_in", "decoder.conv_in.conv")]
    pairs += _mid("decoder.mid", chs[-1])
    cin = chs[-1]
    for i in reversed(range(n)):
        for k in range(nb + 1):
            pairs += _resblock(f"decoder.up.{i}.block.{k}", cfg.decoder_blocks[i], cin, chs[i])
            cin = chs[i]
        if cfg.up[i]:  # both OSP upsamplers hold a CausalConv3d
            pairs.append((f"decoder.up.{i}.resample.conv", f"decoder.up.{i}.upsample.conv.conv"))
    pairs += [("decoder.norm_out", "decoder.norm_out"), ("decoder.conv_out", "decoder.conv_out.conv")]
    return pairs


def _fit(src: Tensor, shape: torch.Size, skey: str, tkey: str) -> Tensor:
    """The source tensor in the target's shape: a copy, or a (O, I, 1, kh, kw) causal kernel as a 2D one."""
    if src.shape == shape:
        return src.detach().clone()
    if src.dim() == 5 and len(shape) == 4 and src.shape[2] == 1 and src.shape[:2] + src.shape[3:] == shape:
        return src.detach()[:, :, 0].clone()  # kt = 1: the causal conv is a per-frame 2D conv
    raise ValueError(f"shape mismatch: {skey} {tuple(src.shape)} cannot become {tkey} {tuple(shape)}")


def convert_osp_vae_state_dict(sd: dict[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """Our state dict from an OSP CausalVAEModel state dict (its own key layout) for `cfg`.

    Every source key is consumed exactly once and every target key produced; raises ValueError listing
    missing / unused source keys and shape mismatches. Tensors keep the source's dtype and device.
    """
    with torch.device("meta"):
        model = CausalVAE(cfg)
    return apply_module_map(sd, model, module_map(cfg), _fit, "Open-Sora-Plan VAE")


# ----------------------------------------------------------------------------- loading


def _identity_quant_convs(cfg: VAEConfig, like: Tensor) -> dict[str, Tensor]:
    """use_quant_layer=False: OSP skips quant_conv / post_quant_conv; ours are then 1x1x1 identities."""
    z = cfg.latent_channels
    out = {}
    for name, ch in (("quant_conv", 2 * z), ("post_quant_conv", z)):
        eye = torch.eye(ch, dtype=like.dtype, device=like.device)
        out[f"{name}.conv.weight"] = eye[:, :, None, None, None]
        out[f"{name}.conv.bias"] = like.new_zeros(ch)
    return out


def load_osp_vae(cfg_json: dict, sd: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> CausalVAE:
    """Our `CausalVAE` holding an OSP CausalVAEModel's weights (any stored dtype, cast to `dtype`).

    Built on the meta device; the converted tensors become its parameters (no random init is spent).
    """
    cfg = osp_vae_config(cfg_json)
    use_quant = cfg_json.get("use_quant_layer", OSP_DEFAULTS["use_quant_layer"])
    if not use_quant:
        for key in ("quant_conv.conv.weight", "post_quant_conv.conv.weight"):
            if key in sd:
                raise ValueError(f"use_quant_layer=False but the state dict holds {key}")
        sd = {**sd, **_identity_quant_convs(cfg, next(iter(sd.values())))}
    return load_on_meta(cfg, convert_osp_vae_state_dict(sd, cfg), dtype)


__all__ = [
    "OSP_DEFAULTS",
    "convert_osp_vae_state_dict",
    "load_osp_vae",
    "module_map",
    "osp_vae_config",
]
