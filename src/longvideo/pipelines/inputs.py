"""What a generation request is made of, checked and put into the model's terms: frame counts, sizes, the
conditioning image or clip as pixels, the DiT's `cond` channels, and whether the VAE decodes as a stream.

One conditioning scheme serves text-to-video, image-to-video and continuation (DESIGN.md §2): a set of
known latent frames. `cond` = [masked-video latents | mask] (B, C + 1, K, h, w): the scaled latents at the
known frames and zeros elsewhere, then a mask channel that is 1 exactly at the known frames. T2V knows
nothing (all zeros), I2V knows latent frame 0 (the image encoded as a one-frame video), continuation knows
the first latent frames of a given clip (EasyAnimate's inpaint channels, Open-Sora-Plan v1.3's
masked-video conditioning).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from longvideo.errors import UserError
from longvideo.models.vae.model import VAEConfig

FRAME_RULE = (
    "frames >= 1; a count that is not 4k+1 (the VAE's temporal factor f = 4) is rounded UP to the next "
    "f*k+1, generated, and cut back to the requested count"
)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def generated_frames(frames: Any, temporal_factor: int, temporal_patch: int = 1, what: str = "frames") -> int:
    """The frame count actually generated for a request of `frames`: the smallest f*k+1 >= frames whose
    latent count k+1 is a multiple of the DiT's temporal patch (1 for every preset). `what` names the count
    in the error (frames, window)."""
    if not _is_int(frames) or frames < 1:
        raise UserError(f"{what} must be an integer >= 1, got {frames!r}")
    f = temporal_factor
    latent = -(-(int(frames) - 1) // f) + 1  # ceil((frames - 1) / f) + 1 latent frames
    latent = -(-latent // temporal_patch) * temporal_patch
    return (latent - 1) * f + 1


def check_size(name: str, value: Any, multiple: int, why: str) -> int:
    """A height or width: a positive multiple of `multiple`, else a UserError naming the nearest valid."""
    if not _is_int(value) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    if value % multiple:
        lo, hi = value // multiple * multiple, (value // multiple + 1) * multiple
        near = f"{lo} or {hi}" if lo else f"{hi}"
        raise UserError(f"{name} {value} is not a multiple of {multiple} ({why}): use {near}")
    return int(value)


# ----------------------------------------------------------------------------- pixels in


def image_to_tensor(image: Any) -> Tensor:
    """An image as (1, 3, H, W) float32 in [-1, 1]: uint8 (H, W, 3) numpy, a PIL image, or a float tensor
    (3, H, W) (or (1, 3, H, W)) already in [-1, 1]."""
    if isinstance(image, Tensor):
        x = image.detach()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[:2] != (1, 3) or not x.is_floating_point():
            raise UserError(
                f"an image tensor must be float (3, H, W) in [-1, 1], got {x.dtype} {tuple(x.shape)}"
            )
        return x.float()
    if not isinstance(image, np.ndarray) and hasattr(image, "convert"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise UserError(f"image must be a uint8 array, a PIL image or a tensor, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"an image array must be uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}")
    x = torch.tensor(image).permute(2, 0, 1)[None]  # (1, 3, H, W), a copy (PIL arrays are read-only)
    return x.float() / 127.5 - 1.0


def video_to_tensor(video: Any) -> Tensor:
    """A clip to continue: float tensor (1, 3, T, H, W) (or (3, T, H, W)) in [-1, 1]."""
    if not isinstance(video, Tensor) or not video.is_floating_point():
        raise UserError(
            f"known must be a float tensor (1, 3, T, H, W) in [-1, 1], got {type(video).__name__}"
        )
    x = video.detach()
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5 or x.shape[:2] != (1, 3):
        raise UserError(f"known must be (1, 3, T, H, W), got {tuple(x.shape)}")
    return x.float()


def fit(x: Tensor, height: int, width: int) -> Tensor:
    """(N, 3, H, W) -> (N, 3, height, width): scale to cover the target keeping the aspect, centre crop.
    Already the right size: returned unchanged (no resampling)."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    s = max(height / h, width / w)
    nh, nw = max(height, math.ceil(h * s - 1e-6)), max(width, math.ceil(w * s - 1e-6))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[..., top : top + height, left : left + width].clamp(-1.0, 1.0)


def fit_video(x: Tensor, height: int, width: int) -> Tensor:
    """(1, 3, T, H, W) -> (1, 3, T, height, width), frame by frame as `fit`."""
    if x.shape[-2:] == (height, width):
        return x
    frames = fit(x[0].transpose(0, 1), height, width)  # (T, 3, height, width)
    return frames.transpose(0, 1)[None]


# ----------------------------------------------------------------------------- conditioning


def build_cond(known: Tensor | None, num_latent: int, channels: int, size: tuple[int, int]) -> Tensor:
    """[masked-video latents | mask] (1, C + 1, K, h, w) from the scaled latents of the known first frames
    (1, C, K0, h, w), or None for nothing known (T2V: all zeros)."""
    cond = torch.zeros(1, channels + 1, num_latent, *size)
    if known is not None:
        k0 = known.shape[2]
        cond[:, :channels, :k0] = known.to(cond)
        cond[:, channels, :k0] = 1.0
    return cond


def _channel_stats(z: Tensor, cfg: VAEConfig) -> tuple[Tensor | float, Tensor | float]:
    """(shift, scale) broadcastable to latents (B, C, T, h, w): per channel when the VAE has statistics."""
    if not cfg.latents_mean and not cfg.latents_std:
        return cfg.shift_factor, cfg.scaling_factor
    c = cfg.latent_channels
    mean = torch.tensor(cfg.latents_mean or [0.0] * c, dtype=z.dtype, device=z.device)
    std = torch.tensor(cfg.latents_std or [1.0] * c, dtype=z.dtype, device=z.device)
    view = (1, c) + (1,) * (z.ndim - 2)
    return cfg.shift_factor + mean.view(view), cfg.scaling_factor / std.view(view)


def scale_latents(z: Tensor, cfg: VAEConfig) -> Tensor:
    """VAE latents (B, C, T, h, w) -> the DiT's: (z - shift) * scale, per channel when the VAE has
    latents_mean / latents_std (shift + mean_c, scale / std_c)."""
    shift, scale = _channel_stats(z, cfg)
    return (z - shift) * scale


def unscale_latents(z: Tensor, cfg: VAEConfig) -> Tensor:
    shift, scale = _channel_stats(z, cfg)
    return z / scale + shift


def decoder_streams(cfg: VAEConfig) -> bool:
    """Whether `decode_stream` decodes this VAE exactly (the layers that look ahead in time refuse a
    stream: see models/vae/layers.py); the seeds' own layouts (OSP v1.2, EasyAnimate slice) do not."""
    look_ahead_up = ("spacetime_trilinear", "spacetime_conv_linear")
    return not (
        cfg.slice_decode
        or cfg.norm_over_time
        or (cfg.mid_attention and cfg.mid_attention_over_time)
        or cfg.time_padding != "causal"
        or any(u in look_ahead_up for u in cfg.up)
    )
