"""longvideo.diffusion against diffusers' schedulers (the reference implementation most checkpoints are used
with): same tables, same timesteps, same samples from the same toy network. Skipped without diffusers."""

import numpy as np
import pytest
import torch

from longvideo.diffusion import (
    DiffusionConfig,
    NoiseSchedule,
    make_denoiser,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sampling_times,
)

diffusers = pytest.importorskip("diffusers")
# diffusers' own numpy-2 deprecation noise
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PRED_TYPE = {"eps": "epsilon", "v": "v_prediction", "flow": "flow_prediction"}
VP = {
    "eps-linear": DiffusionConfig(),
    "eps-scaled": DiffusionConfig(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "v-zero-snr": DiffusionConfig(objective="v", zero_terminal_snr=True),
}


def _vp_kwargs(cfg):
    return dict(
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.schedule,
        prediction_type=PRED_TYPE[cfg.objective],
        timestep_spacing="trailing",
        rescale_betas_zero_snr=cfg.zero_terminal_snr,
    )


def _net(x, timestep):
    """A smooth toy network of (x, timestep); both libraries call it with the same timestep values."""
    t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)[0]
    return 0.6 * torch.tanh(x) + 0.2 * torch.sin(x * 3 + t / 100)


def _ts_from_timesteps(timesteps, n=1000):
    """Our times for diffusers' VP index timesteps, then t = 0 (its final alpha-bar = 1)."""
    t = (torch.as_tensor(timesteps, dtype=torch.float64) + 1) / n
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


@pytest.mark.parametrize("name", list(VP))
def test_alphas_cumprod_match_ddpm_scheduler(name):
    cfg = VP[name]
    ref = diffusers.DDPMScheduler(**_vp_kwargs(cfg)).alphas_cumprod.double()
    # diffusers builds the table in float32
    assert torch.allclose(NoiseSchedule(cfg).alphas_cumprod, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(VP))
def test_ddim_matches_diffusers(name):
    cfg, steps = VP[name], 10
    sched = NoiseSchedule(cfg)
    ref = diffusers.DDIMScheduler(**_vp_kwargs(cfg), set_alpha_to_one=True, clip_sample=False)
    ref.set_timesteps(steps)
    ts = sampling_times(sched, steps)
    assert torch.equal(_ts_from_timesteps(ref.timesteps), ts)
    x = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = x.clone()
    for timestep in ref.timesteps:
        y = ref.step(_net(y, timestep), timestep, y).prev_sample
    ours = sample_ddim(make_denoiser(_net, cfg, sched), x, ts, sched)
    assert torch.allclose(ours, y, atol=1e-5)


@pytest.mark.parametrize("name", ["eps-linear", "eps-scaled", "flow"])
def test_dpmpp_2m_matches_diffusers(name):
    steps = 20  # >= 15: diffusers adds an extra first-order step before the last one below 15 steps
    if name == "flow":
        cfg = DiffusionConfig(objective="flow", schedule="flow", flow_shift=3.0)
        kw = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    else:
        cfg, kw = VP[name], _vp_kwargs(VP[name])
    # diffusers truncates its flow timesteps to integers here (not the sigmas), so give the net no time input
    net = _net if name != "flow" else lambda x, timestep: 0.6 * torch.tanh(x)
    sched = NoiseSchedule(cfg)
    ref = diffusers.DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2)
    ref.set_timesteps(steps)
    ts = ref.sigmas.double() if name == "flow" else _ts_from_timesteps(ref.timesteps)
    x = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    for timestep in ref.timesteps:
        y = ref.step(net(y, timestep), timestep, y).prev_sample
    ours = sample_dpmpp_2m(make_denoiser(net, cfg, sched), x, ts, sched)
    assert torch.allclose(ours, y, atol=1e-4)


def test_flow_euler_matches_diffusers():
    cfg, steps = DiffusionConfig(objective="flow", schedule="flow", flow_shift=3.0), 12
    sched = NoiseSchedule(cfg)
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])  # unshifted; it shifts and appends 0
    ts = sampling_times(sched, steps)
    assert torch.allclose(ref.sigmas.double(), ts, atol=1e-6)
    x = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    for timestep in ref.timesteps:
        y = ref.step(_net(y, timestep), timestep, y).prev_sample
    ours = sample_euler(make_denoiser(_net, cfg, sched), x, ts, sched)
    assert torch.allclose(ours, y, atol=1e-4)


def test_euler_ancestral_matches_diffusers():
    """Same generator, same noise draws; diffusers samples x / alpha (VE), we sample x."""
    cfg, steps = VP["eps-scaled"], 10
    sched = NoiseSchedule(cfg)
    ref = diffusers.EulerAncestralDiscreteScheduler(**_vp_kwargs(cfg))
    ref.set_timesteps(steps)
    ts = _ts_from_timesteps(ref.timesteps)
    x = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = x / sched.alpha_sigma(ts[0])[0].float()
    g = torch.Generator().manual_seed(5)
    for timestep in ref.timesteps:
        y = ref.step(_net(ref.scale_model_input(y, timestep), timestep), timestep, y, generator=g).prev_sample
    ours = sample_euler_ancestral(
        make_denoiser(_net, cfg, sched), x, ts, sched, generator=torch.Generator().manual_seed(5)
    )
    assert torch.allclose(ours, y, atol=1e-4)
