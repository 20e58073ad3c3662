"""Slice mode: a clip encoded and decoded in independent temporal mini-batches (EasyAnimate's Slice VAE).

The encoder sees one mini-batch of frames at a time; the decoder one mini-batch of latent frames, and with
feature sharing its conv_in + mid block also see the previous and the next mini-batch, cropped back before
up-sampling. Memory is bounded by the mini-batch, but nothing is carried between mini-batches, so seams
remain and the result differs from whole-clip processing; our exact streaming (`StreamState`) is the
alternative for our own VAEs. This module exists to run EasyAnimate's released VAE as it was trained.

Mini-batches (EasyAnimate's `slice_compression_vae` rule, the same for frames and latent frames): when the
clip length is odd, its first frame goes alone and starts the video; then `size` frames at a time (the last
may be shorter). An even-length clip has no lone first frame: all its mini-batches continue a video, so
every time up-sampler doubles all of their frames (EasyAnimate's decoder does the same).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mini_batches(length: int, size: int) -> list[slice]:
    """The mini-batches of a clip of `length` frames: [0:1] alone if `length` is odd, then `size` each."""
    if size <= 0:
        raise ValueError(f"mini-batch size must be positive, got {size}")
    start = length % 2
    return [slice(0, 1)] * start + [slice(i, min(i + size, length)) for i in range(start, length, size)]


def encode_slices(encoder: nn.Module, x: Tensor, size: int) -> Tensor:
    """(B, C, T, H, W) -> the encoder's moments, each mini-batch of frames through the encoder alone."""
    return torch.cat([encoder(x[:, :, s]) for s in mini_batches(x.shape[2], size)], dim=2)


def decode_slices(decoder: nn.Module, z: Tensor, size: int, share: bool) -> Tensor:
    """(B, C, t, h, w) latents -> frames, each mini-batch of latent frames through the decoder alone.

    `share`: the decoder's `latent_features` (conv_in + mid block) of a mini-batch run on it together with
    the previous and the next mini-batch (never the lone first frame), then keep its own frames.
    """
    batches = mini_batches(z.shape[2], size)
    lone_first = z.shape[2] % 2 == 1
    out = [decoder(z[:, :, :1], starts_video=True)] if lone_first else []
    regular = batches[1:] if lone_first else batches
    for j, s in enumerate(regular):
        lo = regular[j - 1].start if share and j > 0 else s.start
        hi = regular[j + 1].stop if share and j + 1 < len(regular) else s.stop
        h = decoder.latent_features(z[:, :, lo:hi])[:, :, s.start - lo : s.stop - lo]
        out.append(decoder.upsample(h, starts_video=False))
    return torch.cat(out, dim=2)


__all__ = ["decode_slices", "encode_slices", "mini_batches"]
