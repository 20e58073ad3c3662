"""ExVideo post-tuning (arXiv 2406.14130): give a trained video DiT a longer window, then train only its
temporal parts on long clips.

    cfg = ExtendConfig(frames=33, base_frames=9)     # latent frames: 33-frame training -> 129 frames
    model = extend_dit(base_model, cfg)              # the same function at init (tests/test_extend.py)
    trainable = trainable_globs(model.cfg, cfg)      # what the trainer unfreezes

Per family (DiTConfig.family):
- motion (sinusoidal frame positions, as SVD / AnimateDiff): each motion attention gets a trainable table of
  `frames` rows initialised from the sinusoid at ExVideo's bounce positions (`bounce_positions`: every row is
  a position the base model saw) and an identity 3x3x3 conv adapter after the position add; trained: the
  motion modules (ExVideo: the temporal blocks).
- full3d / parallel (RoPE): positions are relative, so no table: `position` picks "riflex" (the temporal
  component that would repeat inside the new window slows down, RIFLEx), "interp" (temporal positions
  divided by frames / base_frames) or "none"; an identity conv adapter after the patch embedding; trained:
  the adapter and the attentions that mix frames (full3d: every self-attention; parallel: the temporal
  branch).

Without `position` changes (motion table, or position "none"), the extended model computes exactly the
base model's function, for clips up to the base window and beyond; "riflex" / "interp" change it by design.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from longvideo.errors import UserError
from longvideo.models.dit import DiTConfig, VideoDiT, build_dit
from longvideo.models.dit.layers import sinusoid_table
from longvideo.models.dit.rope import intrinsic_component

POSITIONS = ("auto", "riflex", "interp", "none")


@dataclass
class ExtendConfig:
    frames: int = 0  # the new window in latent frames (0 = no extension)
    base_frames: int = 0  # the window the base model was trained on, in latent frames
    position: str = "auto"  # RoPE families: "riflex" | "interp" | "none"; "auto" = riflex (motion: table)
    adapter: bool = True  # insert ExVideo's identity 3x3x3 conv
    bounce: int = 0  # motion table: positions past base_frames bounce over the last `bounce` ones (0 = all)
    trainable: list[str] = field(default_factory=list)  # override the per-family default (trainable_globs)

    def validate(self) -> ExtendConfig:
        if self.frames and not 0 < self.base_frames < self.frames:
            raise UserError(f"extend: need 0 < base_frames < frames, got {self.base_frames}, {self.frames}")
        if self.position not in POSITIONS:
            raise UserError(f"extend.position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if self.bounce < 0 or self.bounce >= max(self.base_frames, 1):
            raise UserError(f"extend.bounce must be in [0, base_frames), got {self.bounce}")
        return self


def bounce_positions(n: int, base: int, repeat: int = 0) -> list[int]:
    """ExVideo's `PositionalID`: 0 .. base-1, then back and forth over the last `repeat` + 1 positions
    without repeating the ends: base=25, repeat=20 -> 0..24, 23..4, 5..24, 23..4, ... (period 2 * repeat).
    repeat 0 = base - 1 (the whole trained range)."""
    repeat = repeat or base - 1
    hi, lo = base - 1, base - 1 - repeat
    out = list(range(min(n, base)))
    for i in range(base, n):
        m = (i - hi) % (2 * repeat) if repeat else 0
        out.append(hi - m if m <= repeat else lo + (m - repeat))
    return out


def extended_config(base: DiTConfig, ext: ExtendConfig) -> DiTConfig:
    """The extended model's config (architecture only; weights come from `extend_dit`)."""
    ext.validate()
    cfg = copy.deepcopy(base)
    cfg.temporal_adapter = ext.adapter
    position = ext.position
    if cfg.family == "motion":
        if position not in ("auto", "none"):
            raise UserError(f"extend.position {position!r}: the motion family uses a position table")
        cfg.temporal_pos_table = ext.frames
        return cfg.validate()
    position = "riflex" if position == "auto" else position
    scale = ext.frames / ext.base_frames
    if position == "riflex":
        cfg.rope_riflex_k = intrinsic_component(*cfg.temporal_rope, ext.base_frames)
        cfg.rope_riflex_frames = ext.frames
    elif position == "interp":
        if cfg.family == "full3d":
            cfg.rope_scale = [cfg.rope_scale[0] * scale, *cfg.rope_scale[1:]]
        else:
            cfg.temporal_rope_scale *= scale
    return cfg.validate()


def extend_dit(base: VideoDiT, ext: ExtendConfig) -> VideoDiT:
    """A new VideoDiT with the base weights, the position table filled (bounce) and identity adapters."""
    cfg = extended_config(base.cfg, ext)
    param = next(base.parameters())
    model = build_dit(cfg, device=param.device).to(param.dtype)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected, unexpected
    fresh = [k for k in missing if "temporal_adapter" not in k and not k.endswith("pos_table")]
    assert not fresh, fresh  # only the new modules may be missing
    if cfg.temporal_pos_table:
        # rows at the bounce positions of the base's own sinusoid (every motion attention has width dim)
        pos = bounce_positions(ext.frames, ext.base_frames, ext.bounce)
        rows = sinusoid_table(ext.base_frames, cfg.dim, param.device)[pos]
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("pos_table"):
                    p.copy_(rows.to(p.dtype))
    return model


def trainable_globs(cfg: DiTConfig, ext: ExtendConfig) -> list[str]:
    """Parameter-name globs post-tuning trains (ExVideo: the temporal blocks and what was added)."""
    if ext.trainable:
        return list(ext.trainable)
    if cfg.family == "motion":
        return ["*attn_temporal.*"]
    if cfg.family == "parallel":
        temporal = ["to_q_temp", "to_k_temp", "to_v_temp", "to_out_temporal", "to_add_out_temporal"]
        return ["temporal_adapter.*"] + [f"*.attn.{n}.*" for n in temporal]
    return ["temporal_adapter.*", "*.attn1.*"]
