"""Longer windows for trained models: ExVideo post-tuning (exvideo.py)."""

from longvideo.extend.exvideo import (
    ExtendConfig,
    bounce_positions,
    extend_dit,
    extended_config,
    trainable_globs,
)

__all__ = ["ExtendConfig", "bounce_positions", "extend_dit", "extended_config", "trainable_globs"]
