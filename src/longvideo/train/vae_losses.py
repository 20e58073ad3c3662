"""Losses for VAE training: reconstruction (L1), KL, optional LPIPS, and a PatchGAN discriminator.

The discriminator judges frames independently (a 2D PatchGAN over (B*T, C, H, W)), as EasyAnimate's and
Open-Sora-Plan's VAE losses do for their image discriminators; hinge loss on both sides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longvideo.diffusion import weighted_mean
from longvideo.models.vae.layers import to_frames


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix NLayer): strided 4x4 convs, one logit per overlapping patch."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_next = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            norm = nn.GroupNorm(min(32, c_next // 4), c_next)
            mods += [nn.Conv2d(c, c_next, 4, stride, 1), norm, nn.LeakyReLU(0.2)]
            c = c_next
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> patch logits (B*T, 1, h, w)
        return self.net(to_frames(x))


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


def adaptive_gan_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> float:
    """|d nll / d last| / (|d g_loss / d last| + 1e-4), clamped to [0, max_weight] (the rule of
    taming-transformers): the weight that gives the GAN term the reconstruction's gradient size at the
    decoder's last layer."""
    (g_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return float((g_nll.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight))


def vae_loss(
    x: Tensor,
    rec: Tensor,
    kl: Tensor,
    kl_weight: float,
    lpips: nn.Module | None = None,
    lpips_weight: float = 0.0,
    mse_weight: float = 0.0,
    weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """L1 (+ mse_weight * MSE) (+ LPIPS) + kl_weight * KL (KL summed over latent elements, batch mean).
    weight: per-pixel weights of the L1 and MSE terms, broadcast to x (e.g. (B, 1, T, H, W)); None = the mean.

    Why an MSE term: L1's gradient is the error's sign, so while the decoder cannot yet place a small object
    it is pulled to the per-pixel median, the background, and objects fade out; MSE keeps pulling towards
    them (on the shapes world the difference is large: BENCHMARKS.md, the VAE's first recipe).
    """

    def mean(err: Tensor) -> Tensor:
        return err.mean() if weight is None else weighted_mean(err, weight).mean()

    l1 = mean((rec - x).abs())
    loss = l1 + kl_weight * kl.mean()
    logs = {"l1": l1.item(), "kl": kl.mean().item()}
    if mse_weight > 0:
        mse = mean((rec - x).pow(2))
        loss = loss + mse_weight * mse
        logs["mse"] = mse.item()
    if lpips is not None and lpips_weight > 0:
        p = lpips(rec, x).mean()
        loss = loss + lpips_weight * p
        logs["lpips"] = p.item()
    return loss, logs
