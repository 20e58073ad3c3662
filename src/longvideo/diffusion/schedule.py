"""The noise process x_t = alpha_t x0 + sigma_t eps, in one continuous time t in [0, 1] (1 = most noise).

VP (DDPM betas, Ho et al. 2020): Ho's discrete step k = 1..N (diffusers' index k - 1) sits at t = k / N
with alpha_t^2 = alphas_cumprod[k - 1], and t = 0 is Ho's x_0: clean data, alpha = 1, sigma = 0. That is the
point the last sampling step goes to in diffusers (`set_alpha_to_one`, `final_sigmas_type="zero"`), so every
schedule here, VP or flow, ends at exactly clean data at t = 0. Between grid points alphas_cumprod is
interpolated linearly (not log-SNR: with zero terminal SNR the last point has log-SNR = -inf). Training and
`sampling_times` only ever use grid points, so the interpolation only serves callers who ask for other times.

Flow (rectified flow, Liu et al. 2022; SD3, Esser et al. 2024): alpha = 1 - t, sigma = t. The SD3 shift acts
on the times (`shift_time`), in `sample_training_times` and in `sampling_times` alike, not on the path.

What the network is told (`model_time`): VP the diffusers index k - 1 in [0, N - 1] (PixArt, OSP), flow t * N
(SD3, Vchitect: `timestep = sigma * 1000`). All times live on the CPU in float64; only per-sample coefficient
vectors travel to the data's device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longvideo.diffusion.config import DiffusionConfig
from longvideo.errors import UserError


class NoiseSchedule:
    """(alpha_t, sigma_t) of a `DiffusionConfig`'s schedule as a function of continuous t."""

    def __init__(self, cfg: DiffusionConfig):
        cfg.validate()
        self.kind = "flow" if cfg.schedule == "flow" else "vp"
        self.num_train_timesteps = cfg.num_train_timesteps
        self.flow_shift = cfg.flow_shift
        self.alphas_cumprod = vp_alphas_cumprod(cfg) if self.kind == "vp" else None  # (N,) float64
        if self.alphas_cumprod is not None:
            # position k / N holds Ho's alpha-bar_k, with alpha-bar_0 = 1 (clean data) in front
            self._table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])  # (N + 1,)

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """alpha_t, sigma_t (float64, t's shape) with x_t = alpha_t x0 + sigma_t eps."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.kind == "flow":
            return 1.0 - t, t
        n = self.num_train_timesteps
        pos = t.clamp(0.0, 1.0) * n
        k = pos.floor().clamp(max=n - 1)
        table = self._table.to(t.device)
        abar = torch.lerp(table[k.long()], table[k.long() + 1], pos - k)
        return abar.sqrt(), (1.0 - abar).clamp(min=0.0).sqrt()

    def log_snr(self, t: Tensor | float) -> Tensor:
        """log(alpha^2 / sigma^2) = 2 lambda; +inf at t = 0, -inf where alpha = 0."""
        alpha, sigma = self.alpha_sigma(t)
        return 2.0 * (alpha.log() - sigma.log())

    def model_time(self, t: Tensor | float) -> Tensor:
        """The timestep the network receives: VP index t N - 1 in [0, N - 1]; flow t N."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.kind == "flow":
            return t * self.num_train_timesteps
        m = t * self.num_train_timesteps - 1.0
        # snap k / N * N back to the integer k that float rounding moved by an ulp (integer timestep tables)
        r = m.round()
        return torch.where((m - r).abs() < 1e-6, r, m)


def vp_alphas_cumprod(cfg: DiffusionConfig) -> Tensor:
    """alpha-bar on the N-step DDPM grid (diffusers' DDPMScheduler formulas), float64 (N,)."""
    n = cfg.num_train_timesteps
    if cfg.schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float64)
    elif cfg.schedule == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=torch.float64) ** 2
    else:
        raise ValueError(f"not a VP schedule: {cfg.schedule!r}")
    abar = torch.cumprod(1.0 - betas, dim=0)
    return rescale_zero_terminal_snr(abar) if cfg.zero_terminal_snr else abar


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Algorithm 1:
    shift and scale sqrt(alpha-bar) so that the last step has alpha = 0 and the first keeps its value."""
    a = alphas_cumprod.sqrt()
    a0, a_last = a[0].clone(), a[-1].clone()
    a = (a - a_last) * (a0 / (a0 - a_last))
    return a**2


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3's timestep shift t' = shift t / (1 + (shift - 1) t): shift > 1 spends more time at high noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def sampling_times(sched: NoiseSchedule, steps: int) -> Tensor:
    """`steps + 1` descending times from 1 to 0 (float64); samplers evaluate the model at the first `steps`.

    VP: "trailing" spacing (diffusers `timestep_spacing="trailing"`): indices round(N (1 - i/steps)) - 1, so
    the first step is at the last training step (N - 1). Lin et al. 2023 §3.3: "leading" spacing never starts
    from the noisiest step, which breaks zero-terminal-SNR models. Flow: linspace(1, 0) then the shift (Flux's
    `get_schedule`, SD3's scheduler with its final sigma = 0).
    """
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if sched.kind == "flow":
        return shift_time(u, sched.flow_shift)
    n = sched.num_train_timesteps
    if steps > n:
        raise UserError(f"steps ({steps}) cannot exceed num_train_timesteps ({n}) on a VP schedule")
    return (u * n).round() / n


def sample_training_times(
    batch: int, cfg: DiffusionConfig, sched: NoiseSchedule, *, generator: torch.Generator | None = None
) -> Tensor:
    """Training times t (B,) float64 on the CPU: u ~ uniform or logit-normal (SD3: sigmoid of N(m, s)); VP
    rounds u down onto the grid (index floor(u N), as diffusers' SD3/flux scripts index their tables), flow
    shifts it."""
    device = generator.device if generator is not None else "cpu"
    if cfg.timestep_sampling == "logit_normal":
        z = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * z)
    else:
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    u = u.cpu()
    if sched.kind == "flow":
        return shift_time(u, sched.flow_shift)
    n = sched.num_train_timesteps
    index = (u * n).floor().clamp(max=n - 1)  # diffusers' timestep index 0..N-1
    return (index + 1.0) / n
