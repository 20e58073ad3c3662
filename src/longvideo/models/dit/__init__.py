"""Video diffusion transformers: one `VideoDiT`, three block families (motion / full3d / parallel)."""

from longvideo.models.dit.blocks import BlockInputs
from longvideo.models.dit.config import FAMILIES, PRESETS, DiTConfig, dit_preset
from longvideo.models.dit.layers import AttentionFn, AttentionOp, sdpa_attention
from longvideo.models.dit.model import VideoDiT, build_dit
from longvideo.models.dit.rope import Rope, rope_1d, rope_3d

__all__ = [
    "FAMILIES",
    "PRESETS",
    "AttentionFn",
    "AttentionOp",
    "BlockInputs",
    "DiTConfig",
    "Rope",
    "VideoDiT",
    "build_dit",
    "dit_preset",
    "rope_1d",
    "rope_3d",
    "sdpa_attention",
]
