"""Inflate a 2D image VAE (diffusers `AutoencoderKL` layout) into our causal video VAE.

Every 2D kernel (O, I, kh, kw) goes into the *last temporal tap* of its causal 3D kernel (O, I, kt, kh, kw),
the other taps zero ("tail init"). A causal conv's last tap is the current frame (the earlier taps see the
past), so each stride-1 conv of the inflated VAE acts on every frame exactly as the image VAE's conv does;
norms and the mid attention already work per frame. The untrained inflated VAE therefore *is* the image VAE
applied frame by frame, and video training starts from it instead of from noise. What the time axis does
under tail init:

* a stride-2 causal conv's output n reads padded frames 2n..2n+2 (two copies of frame 0 are prepended),
  and its last tap is input frame 2n, so each space-time downsampler keeps the even frames: latent frame
  k is the image latent of frame 4k (f = 4), the first frame of a 4k+1-frame clip included;
* `TimeUpsample` repeats frames (the first once) and the following tail-init conv sees one copy, so latent
  frame 0 decodes to 1 frame and every later one to f identical frames: the image decode of that latent.

The key map (diffusers -> ours, `.weight`/`.bias` of each) is explicit and checked both ways in
`inflate_state_dict`: every target key is produced once, every source key consumed.

    encoder.conv_in                                 encoder.conv_in
    encoder.down_blocks.{i}.resnets.{j}.X           encoder.down.{i}.block.{j}.X'
    encoder.down_blocks.{i}.downsamplers.0.conv     encoder.down.{i}.resample.conv
    {en,de}coder.mid_block.resnets.{0,1}.X          {en,de}coder.mid.block_{1,2}.X'
    {en,de}coder.mid_block.attentions.0.Y           {en,de}coder.mid.attn_1.Y'  (Linear (C, C) -> 1x1 conv)
    {en,de}coder.conv_norm_out                      {en,de}coder.norm_out
    {en,de}coder.conv_out, quant_conv, post_quant_conv, decoder.conv_in: same names
    decoder.up_blocks.{j}.resnets.{k}.X             decoder.up.{n-1-j}.block.{k}.X'  (j = 0: deepest level)
    decoder.up_blocks.{j}.upsamplers.0.conv         decoder.up.{n-1-j}.resample.conv

with X -> X': norm1, conv1, norm2, conv2 -> same names, conv_shortcut -> nin_shortcut, and Y -> Y':
group_norm -> norm, to_q/to_k/to_v -> q/k/v, to_out.0 -> proj_out (old diffusers names query/key/value/
proj_attn are accepted). Our module paths resolve to their parameters through `.conv` (CausalConv3d) and
`.norm` (Norm) where the model has those wrappers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from longvideo.convert.keymap import apply_module_map, check_all_set
from longvideo.models.vae.model import CausalVAE, VAEConfig

# diffusers' AutoencoderKL defaults, for config keys a config.json leaves out
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
    "block_out_channels": (64,),
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# ----------------------------------------------------------------------------- config


def vae_config_from_autoencoder_kl(config: dict, **overrides: Any) -> VAEConfig:
    """Our `VAEConfig` for a diffusers `AutoencoderKL` config dict.

    Levels, channels, blocks per level, groups and latent size come from the image VAE. Time is ours to
    choose: `temporal_downsample` (default 2, i.e. 4x in time) space-time downsamplers at the deepest levels,
    spatial-only ones above them (the first one spatial for the default 4 levels), and the upsamplers mirror
    them. Any other keyword overrides that `VAEConfig` field (e.g. `encoder_blocks=["2d", ...]`); all block
    kinds default to "3d". Raises ValueError for what our VAE cannot express.
    """
    c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"not an AutoencoderKL config: _class_name={config['_class_name']!r}")
    chs = list(c["block_out_channels"])
    n = len(chs)
    problems = []
    if any(t != "DownEncoderBlock2D" for t in c["down_block_types"]) or len(c["down_block_types"]) != n:
        problems.append(f"down_block_types must be {n} x DownEncoderBlock2D, got {c['down_block_types']}")
    if any(t != "UpDecoderBlock2D" for t in c["up_block_types"]) or len(c["up_block_types"]) != n:
        problems.append(f"up_block_types must be {n} x UpDecoderBlock2D, got {c['up_block_types']}")
    if c["act_fn"] != "silu":
        problems.append(f"act_fn must be 'silu', got {c['act_fn']!r}")
    if c["in_channels"] != c["out_channels"]:
        problems.append(f"in_channels ({c['in_channels']}) != out_channels ({c['out_channels']})")
    if any(ch % chs[0] for ch in chs):
        problems.append(f"block_out_channels {chs} are not multiples of the first")
    if c["latents_mean"] is not None or c["latents_std"] is not None:
        problems.append("per-channel latents_mean/latents_std (only a scalar scale and shift are supported)")
    if problems:
        raise ValueError("cannot express this AutoencoderKL config: " + "; ".join(problems))

    t = overrides.pop("temporal_downsample", 2)
    if not 0 <= t <= n - 1:
        raise ValueError(f"temporal_downsample={t}: a {n}-level VAE has {n - 1} downsamplers")
    down = ["spatial"] * (n - 1 - t) + ["spacetime"] * t + [""]  # down[i]: after level i
    up = ["", *down[:-1]]  # up[i] undoes down[i - 1]
    fields = {f.name for f in dataclasses.fields(VAEConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown VAEConfig override(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {
        "in_channels": c["in_channels"],
        "latent_channels": c["latent_channels"],
        "base_channels": chs[0],
        "channel_mult": [ch // chs[0] for ch in chs],
        "num_res_blocks": c["layers_per_block"],
        "encoder_conv_in": "3d",
        "encoder_blocks": ["3d"] * n,
        "decoder_blocks": ["3d"] * n,
        "down": down,
        "up": up,
        "mid_attention": bool(c["mid_block_add_attention"]),
        "norm_groups": c["norm_num_groups"],
        "norm_over_time": False,
        "dropout": 0.0,
        "scaling_factor": float(c["scaling_factor"]),
        "shift_factor": float(c["shift_factor"] or 0.0),
    }
    return VAEConfig(**{**kwargs, **overrides}).validate()


# ----------------------------------------------------------------------------- the key map


def _resnet(ours: str, theirs: str) -> list[tuple[str, str]]:
    names = ("norm1", "conv1", "norm2", "conv2")
    return [(f"{ours}.{x}", f"{theirs}.{x}") for x in names] + [
        (f"{ours}.nin_shortcut", f"{theirs}.conv_shortcut")  # dropped below where ours has none
    ]


def _mid(ours: str, theirs: str, attention: bool) -> list[tuple[str, str]]:
    pairs = [
        *_resnet(f"{ours}.block_1", f"{theirs}.resnets.0"),
        *_resnet(f"{ours}.block_2", f"{theirs}.resnets.1"),
    ]
    if attention:
        a, b = f"{ours}.attn_1", f"{theirs}.attentions.0"
        pairs += [(f"{a}.norm", f"{b}.group_norm"), (f"{a}.q", f"{b}.to_q"), (f"{a}.k", f"{b}.to_k")]
        pairs += [(f"{a}.v", f"{b}.to_v"), (f"{a}.proj_out", f"{b}.to_out.0")]
    return pairs


def module_map(cfg: VAEConfig) -> list[tuple[str, str]]:
    """(our module path, diffusers module path) for every module with parameters, for this config."""
    n, nb = len(cfg.channel_mult), cfg.num_res_blocks
    pairs = [("encoder.conv_in", "encoder.conv_in")]
    for i in range(n):
        for j in range(nb):
            pairs += _resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}")
        if cfg.down[i]:
            pairs.append((f"encoder.down.{i}.resample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv"))
    pairs += _mid("encoder.mid", "encoder.mid_block", cfg.mid_attention)
    pairs += [("encoder.norm_out", "encoder.conv_norm_out"), ("encoder.conv_out", "encoder.conv_out")]
    pairs += [("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")]
    pairs += [("decoder.conv_in", "decoder.conv_in")]
    pairs += _mid("decoder.mid", "decoder.mid_block", cfg.mid_attention)
    for j in range(n):  # diffusers runs up_blocks in order, deepest first; ours stores level i at up.{i}
        i = n - 1 - j
        for k in range(nb + 1):
            pairs += _resnet(f"decoder.up.{i}.block.{k}", f"decoder.up_blocks.{j}.resnets.{k}")
        if cfg.up[i]:
            pairs.append((f"decoder.up.{i}.resample.conv", f"decoder.up_blocks.{j}.upsamplers.0.conv"))
    pairs += [("decoder.norm_out", "decoder.conv_norm_out"), ("decoder.conv_out", "decoder.conv_out")]
    return pairs


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        return model.get_submodule(path) is not None
    except AttributeError:
        return False


def _inflate(src: Tensor, shape: torch.Size, skey: str, tkey: str) -> Tensor:
    """The source tensor in the target's shape: copy, Linear (C, C) -> 1x1 conv, 2D kernel -> tail-init 3D."""
    src = src.detach()
    if src.shape == shape:
        return src.clone()
    if src.dim() == 2 and len(shape) == 4 and shape[2:] == (1, 1) and src.shape == shape[:2]:
        return src.reshape(shape).clone()  # attention Linear -> 1x1 conv
    if src.dim() == 4 and len(shape) == 5 and src.shape == shape[:2] + shape[3:]:
        w = src.new_zeros(shape)
        w[:, :, -1] = src  # tail init: the last temporal tap is the current frame
        return w
    raise ValueError(f"shape mismatch: {skey} {tuple(src.shape)} cannot become {tkey} {tuple(shape)}")


def _rename_old_attention(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Old diffusers attention names (query/key/value/proj_attn) -> current ones (to_q/.../to_out.0)."""
    out = {}
    for key, v in sd.items():
        parts = key.split(".")
        if "attentions" in parts and len(parts) >= 2 and parts[-2] in _OLD_ATTENTION_NAMES:
            key = ".".join([*parts[:-2], _OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
        out[key] = v
    return out


def inflate_state_dict(sd2d: dict[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """Our 3D state dict from a diffusers AutoencoderKL state dict, by the module map and tail init.

    Raises ValueError on a wrong shape, a target key without a source, a source key used twice or never.
    Tensors keep the source's dtype and device; nothing is shared with `sd2d`.
    """
    sd2d = _rename_old_attention(sd2d)
    with torch.device("meta"):
        model = CausalVAE(cfg)
    pairs = [
        (ours, theirs)
        for ours, theirs in module_map(cfg)  # cin == cout: no shortcut conv on either side
        if not (ours.endswith(".nin_shortcut") and not _has_module(model, ours))
    ]
    return apply_module_map(
        sd2d, model, pairs, _inflate, "image VAE", collect_mismatches=False, unmapped_is_value_error=True
    )


# ----------------------------------------------------------------------------- loading


def _read_folder(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    from longvideo.models.weights import read_json, read_weights

    cfg_path, weights = folder / "config.json", folder / "diffusion_pytorch_model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (expected a diffusers AutoencoderKL folder)")
    return read_json(cfg_path, root=folder), read_weights(weights, root=folder)


def _identity_quant_convs(config: dict, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """use_quant_conv / use_post_quant_conv False: the missing 1x1 conv is the identity, so add that."""
    sd = dict(sd)
    z = config.get("latent_channels", _DIFFUSERS_DEFAULTS["latent_channels"])
    ref = next(iter(sd.values()), torch.zeros(0))
    for name, ch in (("quant_conv", 2 * z), ("post_quant_conv", z)):
        if not config.get(f"use_{name}", True) and f"{name}.weight" not in sd:
            sd[f"{name}.weight"] = torch.eye(ch, dtype=ref.dtype, device=ref.device)[:, :, None, None]
            sd[f"{name}.bias"] = ref.new_zeros(ch)
    return sd


def inflate_autoencoder_kl(model_or_folder: Any, **overrides: Any) -> CausalVAE:
    """Our causal VAE from a diffusers `AutoencoderKL` instance or a local folder saved by it
    (`config.json` + `diffusion_pytorch_model.safetensors`; read without importing diffusers).

    `overrides` go to `vae_config_from_autoencoder_kl`. The model is built on the meta device and takes the
    inflated tensors as its parameters (their dtype and device), so no random init is spent.
    """
    if isinstance(model_or_folder, str | Path):
        config, sd2d = _read_folder(Path(model_or_folder))
    else:
        config, sd2d = dict(model_or_folder.config), model_or_folder.state_dict()
    cfg = vae_config_from_autoencoder_kl(config, **overrides)
    sd3d = inflate_state_dict(_identity_quant_convs(config, sd2d), cfg)
    with torch.device("meta"):
        vae = CausalVAE(cfg)
    result = vae.load_state_dict(sd3d, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}")
    check_all_set(vae)
    return vae


__all__ = ["inflate_autoencoder_kl", "inflate_state_dict", "module_map", "vae_config_from_autoencoder_kl"]
