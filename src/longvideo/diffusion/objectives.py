"""Objectives: what the network predicts, how that maps back to x0 / eps, the training loss, the denoiser.

With x_t = alpha x0 + sigma eps (see schedule.py) the three objectives and their inverses are

    objective  target                  x0 from a prediction p     eps from p
    eps        eps                     (x_t - sigma p) / alpha    p
    v          alpha eps - sigma x0    alpha x_t - sigma p        sigma x_t + alpha p    (VP: a^2 + s^2 = 1)
    flow       eps - x0 (= dx_t/dt)    x_t - sigma p              x_t + alpha p          (a + s = 1)

(v: Salimans & Ho 2022; flow: Liu et al. 2022, Lipman et al. 2022, SD3.) A network is any callable
`model_fn(x_t, model_time, **model_kwargs) -> prediction`, model_time = sched.model_time(t) of shape (B,).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from longvideo.diffusion.config import DiffusionConfig
from longvideo.diffusion.schedule import NoiseSchedule, sample_training_times

ModelFn = Callable[..., Tensor]  # (x_t, model_time (B,), **model_kwargs) -> prediction, x_t's shape
Denoiser = Callable[..., Tensor]  # (x_t, t: float, **model_kwargs) -> x0_hat


def _coeffs(t: Tensor | float, sched: NoiseSchedule, like: Tensor) -> tuple[Tensor, Tensor]:
    """alpha_t, sigma_t shaped (B or 1, 1, ..., 1) to broadcast against `like`, in its dtype and device."""
    alpha, sigma = sched.alpha_sigma(torch.as_tensor(t, dtype=torch.float64).reshape(-1))
    shape = (-1,) + (1,) * (like.ndim - 1)
    return alpha.to(like.device, like.dtype).view(shape), sigma.to(like.device, like.dtype).view(shape)


def add_noise(x0: Tensor, eps: Tensor, t: Tensor | float, sched: NoiseSchedule) -> Tensor:
    """x_t = alpha_t x0 + sigma_t eps; t is (B,) or a scalar."""
    alpha, sigma = _coeffs(t, sched, x0)
    return alpha * x0 + sigma * eps


def target(x0: Tensor, eps: Tensor, t: Tensor | float, sched: NoiseSchedule, objective: str) -> Tensor:
    """The regression target of `objective` at x_t = add_noise(x0, eps, t)."""
    if objective == "eps":
        return eps
    if objective == "flow":
        return eps - x0
    alpha, sigma = _coeffs(t, sched, x0)
    return alpha * eps - sigma * x0


def pred_to_x0(pred: Tensor, x_t: Tensor, t: Tensor | float, sched: NoiseSchedule, objective: str) -> Tensor:
    """The data prediction x0_hat implied by the network's prediction."""
    alpha, sigma = _coeffs(t, sched, x_t)
    if objective == "eps":
        return (x_t - sigma * pred) / alpha
    if objective == "v":
        return alpha * x_t - sigma * pred
    return x_t - sigma * pred


def pred_to_eps(pred: Tensor, x_t: Tensor, t: Tensor | float, sched: NoiseSchedule, objective: str) -> Tensor:
    """The noise prediction eps_hat implied by the network's prediction."""
    if objective == "eps":
        return pred
    alpha, sigma = _coeffs(t, sched, x_t)
    if objective == "v":
        return sigma * x_t + alpha * pred
    return x_t + alpha * pred


def min_snr_weight(t: Tensor, sched: NoiseSchedule, objective: str, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), float64 like t.

    The paper weights the x0 loss by min(SNR, gamma). A loss on prediction p equals the x0 loss divided by
    c^2, c = |d x0 / d p| (eps: sigma / alpha, v and flow: sigma), so the weight on p's loss is
    min(SNR, gamma) c^2: eps min(SNR, gamma) / SNR, v min(SNR, gamma) / (SNR + 1) (the paper's two formulas),
    and for flow, by the same rule, min(SNR, gamma) t^2 = min((1 - t)^2, gamma t^2). This choice makes every
    objective the same min-SNR weighted x0 loss; for flow it vanishes at both ends (t = 0 and t = 1) and is at
    most gamma / (1 + sqrt(gamma))^2 (0.48 at gamma = 5), so expect a smaller loss scale than unweighted flow.
    """
    alpha, sigma = sched.alpha_sigma(t)
    if objective == "eps":
        return torch.clamp(gamma * (sigma / alpha) ** 2, max=1.0)  # min(SNR, gamma) / SNR without 0 / 0
    return torch.minimum(alpha**2, gamma * sigma**2)  # min(SNR, gamma) sigma^2, finite at sigma = 0


def weighted_mean(err: Tensor, weight: Tensor) -> Tensor:
    """Per-sample weighted mean (B,) of err (B, ...) over all but the batch dim; weight broadcasts to err
    (a 0/1 loss mask, or loss weights). An all-zero weight gives 0, not nan."""
    w = weight.to(err).expand_as(err)
    dims = tuple(range(1, err.ndim))
    return (err * w).sum(dims) / w.sum(dims).clamp(min=1e-8)


def training_loss(
    model_fn: ModelFn,
    x0: Tensor,
    cfg: DiffusionConfig,
    *,
    sched: NoiseSchedule | None = None,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    eps: Tensor | None = None,
    loss_mask: Tensor | None = None,
    **model_kwargs,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One diffusion training loss: sample t and eps, x_t = alpha x0 + sigma eps, MSE of
    `model_fn(x_t, model_time(t), **model_kwargs)` to the objective's target over all but the batch dim.

    x0: (B, ...), e.g. latents (B, C, T, H, W). t: optional fixed times (B,) (validation, stratified
    sampling, per-sample draws); otherwise drawn by `sample_training_times`. eps: optional noise of x0's
    shape (per-sample draws), otherwise drawn from `generator`. loss_mask: broadcastable to x0, e.g.
    (B, 1, T, 1, 1), 1 where an element counts (0 on conditioning frames), or per-element loss weights; the
    loss is the weighted mean.
    Returns (loss (B,) in at least float32, with min-SNR weights applied when cfg.min_snr_gamma is set,
    info {"t": (B,) float64, "weight": (B,)}).
    """
    sched = sched if sched is not None else NoiseSchedule(cfg)
    if t is None:
        t = sample_training_times(x0.shape[0], cfg, sched, generator=generator)
    t = torch.as_tensor(t, dtype=torch.float64).cpu()
    if eps is None:
        dev = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=dev)
    eps = eps.to(x0.device, x0.dtype)
    x_t = add_noise(x0, eps, t, sched)
    pred = model_fn(x_t, sched.model_time(t).to(x0.device, torch.float32), **model_kwargs)
    dtype = torch.promote_types(x0.dtype, torch.float32)  # the loss in at least fp32 for bf16 models
    err = (pred.to(dtype) - target(x0.to(dtype), eps.to(dtype), t, sched, cfg.objective)) ** 2  # (B, ...)
    loss = err.mean(tuple(range(1, err.ndim))) if loss_mask is None else weighted_mean(err, loss_mask)
    if cfg.min_snr_gamma is None:
        weight = torch.ones_like(loss)
    else:
        weight = min_snr_weight(t, sched, cfg.objective, cfg.min_snr_gamma).to(loss)
    return loss * weight, {"t": t, "weight": weight}


def make_denoiser(model_fn: ModelFn, cfg: DiffusionConfig, sched: NoiseSchedule) -> Denoiser:
    """Turn a network into the samplers' data-prediction denoiser `denoise(x_t, t, **model_kwargs) -> x0_hat`
    (t: a float time in [0, 1]); bind conditioning with functools.partial or `cfg_denoiser`."""

    def denoise(x: Tensor, t: float, **model_kwargs) -> Tensor:
        tb = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        pred = model_fn(x, sched.model_time(tb).to(x.device, torch.float32), **model_kwargs)
        return pred_to_x0(pred.to(x.dtype), x, tb, sched, cfg.objective)

    return denoise
