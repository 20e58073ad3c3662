"""Samplers: plain functions with one signature (as in k-diffusion),

    sample_xxx(denoise, x, ts, sched, *, generator=None, callback=None, **opts) -> x0

- denoise(x_t, t) -> x0_hat: a data-prediction denoiser at the float time t (`make_denoiser`, `cfg_denoiser`).
- x: the sample at time ts[0]. For ts[0] = 1 that is standard Gaussian noise: exact for flow and for zero
  terminal SNR, the usual approximation (alpha(1) ~ 0.006) for plain DDPM betas.
- ts: strictly descending times from `sampling_times`, normally ending at 0 (clean data: the step there
  returns x0_hat). Pass `ts[k:]` with x = add_noise(x0, eps, ts[k]) to start from a partly noised input.
- callback(i, t, x, x0_hat) after step i (progress bars, previews).
- generator: for the fresh noise of stochastic samplers; deterministic ones accept and ignore it.

Every update is written in (alpha, sigma) and lambda = log(alpha / sigma) only, so each sampler runs
unchanged on VP and flow paths, including alpha = 0 at t = 1. In exact arithmetic Euler = DDIM(eta=0) and
Euler ancestral(eta) = DDIM(eta) (Karras et al. 2022, §3 and App. B.1: DDIM is Euler on x / alpha); the tests
check both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from longvideo.diffusion.schedule import NoiseSchedule
from longvideo.errors import UserError

Callback = Callable[[int, float, Tensor, Tensor], None]


def _path(ts: Sequence[float] | Tensor, sched: NoiseSchedule) -> tuple[list[float], list[float], list[float]]:
    """ts, alpha(ts), sigma(ts) as Python floats (float64 scalars per step)."""
    ts = torch.as_tensor(ts, dtype=torch.float64).cpu().reshape(-1)
    if len(ts) < 2 or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"ts must hold at least 2 strictly descending times, got {ts.tolist()}")
    alpha, sigma = sched.alpha_sigma(ts)
    return ts.tolist(), alpha.tolist(), sigma.tolist()


def _lambda(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma), with the limits -inf (pure noise) and +inf (clean data)."""
    if alpha == 0.0:
        return -math.inf
    if sigma == 0.0:
        return math.inf
    return math.log(alpha / sigma)


def _noise_ratio(a: float, s: float, a_next: float, s_next: float) -> float:
    """e^{-h} = (s_next / a_next) / (s / a), h = lambda_next - lambda > 0."""
    return (a * s_next) / (a_next * s)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _euler_step(x: Tensor, x0: Tensor, a: float, s: float, a_next: float, s_next: float) -> Tensor:
    """One Euler step of the probability-flow ODE from (a, s) to (a_next, s_next), with x0 = denoise(x).

    Taken in rectified-flow variables y = x / (a + s), tau = s / (a + s), where every path is the straight
    line y = (1 - tau) x0 + tau eps, dy/dtau = eps - x0. Unlike k-diffusion's x / alpha this stays finite at
    alpha = 0, and for the flow schedule (a + s = 1) it is SD3's step x += (t_next - t) v exactly.
    """
    tau, tau_next = s / (a + s), s_next / (a_next + s_next)
    y = x / (a + s)
    d = (y - x0) / tau  # dy/dtau = eps_hat - x0_hat (the flow velocity)
    return (a_next + s_next) * (y + (tau_next - tau) * d)


def sample_ddim(
    denoise: Callable[[Tensor, float], Tensor],
    x: Tensor,
    ts: Sequence[float] | Tensor,
    sched: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_next = alpha' x0 + sqrt(sigma'^2 - c^2) eps_hat + c z, with
    eq. 16's c = eta sigma' sqrt(1 - e^{-2h}) written in lambda so it also holds off VP. eta = 0:
    deterministic (the ODE); eta = 1: the DDPM posterior (ancestral) step."""
    ts, a, s = _path(ts, sched)
    for i in range(len(ts) - 1):
        x0 = denoise(x, ts[i])
        eps = (x - a[i] * x0) / s[i]
        c = min(s[i + 1], eta * s[i + 1] * math.sqrt(1.0 - _noise_ratio(a[i], s[i], a[i + 1], s[i + 1]) ** 2))
        x = a[i + 1] * x0 + math.sqrt(s[i + 1] ** 2 - c**2) * eps
        if c > 0:
            x = x + c * _randn_like(x, generator)
        if callback is not None:
            callback(i, ts[i], x, x0)
    return x


def sample_euler(
    denoise: Callable[[Tensor, float], Tensor],
    x: Tensor,
    ts: Sequence[float] | Tensor,
    sched: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 with no 2nd-order
    correction); for flow it is the flow-matching Euler sampler of SD3 / Vchitect (FlowMatchEulerDiscrete)."""
    ts, a, s = _path(ts, sched)
    for i in range(len(ts) - 1):
        x0 = denoise(x, ts[i])
        x = _euler_step(x, x0, a[i], s[i], a[i + 1], s[i + 1])
        if callback is not None:
            callback(i, ts[i], x, x0)
    return x


def sample_euler_ancestral(
    denoise: Callable[[Tensor, float], Tensor],
    x: Tensor,
    ts: Sequence[float] | Tensor,
    sched: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
) -> Tensor:
    """Euler ancestral (k-diffusion `sample_euler_ancestral`, diffusers' EulerAncestralDiscreteScheduler as in
    OSP's scripts): an Euler step down to noise level sigma_down, then fresh noise sigma_up, where
    sigma_up = eta sigma' sqrt(1 - e^{-2h}) and sigma_down^2 + sigma_up^2 = sigma'^2 (k-diffusion's
    `get_ancestral_step`, in units of x rather than x / alpha)."""
    ts, a, s = _path(ts, sched)
    for i in range(len(ts) - 1):
        x0 = denoise(x, ts[i])
        s_next = s[i + 1]
        up = min(s_next, eta * s_next * math.sqrt(1.0 - _noise_ratio(a[i], s[i], a[i + 1], s_next) ** 2))
        down = math.sqrt(s_next**2 - up**2)
        x = _euler_step(x, x0, a[i], s[i], a[i + 1], down)
        if up > 0:
            x = x + up * _randn_like(x, generator)
        if callback is not None:
            callback(i, ts[i], x, x0)
    return x


def sample_dpmpp_2m(
    denoise: Callable[[Tensor, float], Tensor],
    x: Tensor,
    ts: Sequence[float] | Tensor,
    sched: NoiseSchedule,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2): second-order multistep in lambda with
    data prediction, x' = (sigma'/sigma) x - alpha' (e^{-h} - 1) D, D = (1 + 1/2r) x0_i - (1/2r) x0_{i-1},
    r = h_{i-1} / h. First order (= DDIM) on the first step and on the step to t = 0 ("lower_order_final":
    there h = inf and the correction is undefined)."""
    ts, a, s = _path(ts, sched)
    x0_prev, h_prev = None, math.nan
    for i in range(len(ts) - 1):
        x0 = denoise(x, ts[i])
        h = _lambda(a[i + 1], s[i + 1]) - _lambda(a[i], s[i])
        d = x0
        if x0_prev is not None and s[i + 1] > 0:
            r = h_prev / h  # inf after a first step from alpha = 0: the correction then vanishes
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        x = (s[i + 1] / s[i]) * x - a[i + 1] * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, ts[i], x, x0)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """A sampler by name (CLI / config), or a one-line UserError."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
