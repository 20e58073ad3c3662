"""Name what a state dict or config.json is, so a wrong file gets an error that says what it holds.

Each signature is a few key patterns that only that model family has. `identify` answers (a human-readable
name, the `--from` family that converts it) for a state dict's keys, `source_format` the `--from` name a
transformer config.json belongs to; both None when nothing matches, and neither raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# (name, the --from family that converts it or "", patterns that must all match some key)
_SD_SIGNATURES: list[tuple[str, str, tuple[str, ...]]] = [
    ("an ExVideo-SVD extension (DiffSynth keys)", "exvideo-svd", (r"^blocks\.\d+\.positional_embedding",)),
    ("a diffusers UNetSpatioTemporalConditionModel (SVD)", "", (r"temporal_transformer_blocks\.",)),
    ("a Vchitect-2.0 VchitectXLTransformerModel", "vchitect-2", (r"\.attn\.to_q_temp\.",)),
    ("an SD3-style MM-DiT transformer", "", (r"^context_embedder\.", r"\.attn\.add_q_proj\.")),
    ("an EasyAnimate Transformer3DModel", "easyanimate", (r"\.attn_temporal\.",)),
    ("an OpenSoraT2V (or PixArt-style) transformer", "osp-v1.2", (r"^adaln_single\.", r"\.attn1\.")),
    ("an Open-Sora-Plan CausalVAEModel", "", (r"^encoder\.down\.\d+\.block\.",)),
    ("an EasyAnimate AutoencoderKLMagvit VAE", "", (r"^encoder\.down_blocks\.\d+\.convs\.",)),
    ("a diffusers AutoencoderKL (image VAE)", "", (r"^encoder\.down_blocks\.\d+\.resnets\.",)),
    ("a diffusers UNet2DConditionModel", "", (r"^down_blocks\.\d+\.resnets\.", r"^conv_in\.")),
]

FORMATS = ("osp-v1.2", "easyanimate-v1", "easyanimate-v3", "vchitect-2", "exvideo-svd")  # the --from names

_CLASSES = {
    "OpenSoraT2V": "osp-v1.2",
    "VchitectXLTransformerModel": "vchitect-2",
    "Transformer3DModel": "easyanimate",  # v1 or v3: see `source_format`
}


def identify(keys: Iterable[str]) -> tuple[str, str] | None:
    """(what a state dict's keys look like, the --from family that converts it or "") or None, e.g.
    ("an EasyAnimate Transformer3DModel", "easyanimate")."""
    keys = list(keys)
    for name, family, patterns in _SD_SIGNATURES:
        if all(any(re.search(p, k) for k in keys) for p in patterns):
            return name, family
    return None


def describe(found: tuple[str, str]) -> str:
    """E.g. 'an EasyAnimate Transformer3DModel (use --from easyanimate-v1 or easyanimate-v3)'."""
    name, family = found
    if not family:
        return name
    fmts = " or ".join(f for f in FORMATS if f.startswith(family))
    return f"{name} (use --from {fmts})"


def source_format(config: dict) -> str | None:
    """The `--from` format a transformer config.json belongs to, from its `_class_name` or, for configs
    without one (the parity fixtures), from keys only that class has; None if none matches."""
    cls = config.get("_class_name")
    fmt = _CLASSES.get(cls) if isinstance(cls, str) else None
    if fmt is None and cls is None:
        if {"use_rope", "interpolation_scale_t", "caption_channels"} <= set(config):
            fmt = "osp-v1.2"
        elif {"joint_attention_dim", "caption_projection_dim", "pos_embed_max_size"} <= set(config):
            fmt = "vchitect-2"
        elif {"basic_block_type", "motion_module_type"} <= set(config):
            fmt = "easyanimate"
    if fmt == "easyanimate":
        v3 = config.get("basic_block_type") == "global_motionmodule"
        return "easyanimate-v3" if v3 else "easyanimate-v1"
    return fmt


__all__ = ["FORMATS", "describe", "identify", "source_format"]
