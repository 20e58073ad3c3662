"""longvideo.diffusion: schedules, objectives, training loss, timestep sampling, samplers, guidance.

The samplers are checked against an exact denoiser: for data N(mu, s^2) the posterior mean is
E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu), and a deterministic sampler is then
an affine map of its input noise, so the mean and std of what it produces can be read off exactly.
"""

import math

import pytest
import torch

from longvideo.config import load_config
from longvideo.diffusion import (
    SAMPLERS,
    DiffusionConfig,
    NoiseSchedule,
    add_noise,
    cfg_denoiser,
    get_sampler,
    make_denoiser,
    min_snr_weight,
    pred_to_eps,
    pred_to_x0,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_training_times,
    sampling_times,
    shift_time,
    target,
    training_loss,
)
from longvideo.errors import UserError

CONFIGS = {
    "eps-linear": DiffusionConfig(),
    "eps-scaled": DiffusionConfig(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "v-linear": DiffusionConfig(objective="v"),
    "v-zero-snr": DiffusionConfig(objective="v", zero_terminal_snr=True),
    "flow": DiffusionConfig(objective="flow", schedule="flow"),
    "flow-shift3": DiffusionConfig(objective="flow", schedule="flow", flow_shift=3.0),
}
DETERMINISTIC = ["ddim", "euler", "dpmpp_2m"]
MU, SD = 0.5, 0.5  # the Gaussian data distribution of the sampler tests


def _sched(name):
    return NoiseSchedule(CONFIGS[name])


def _textbook_alphas_cumprod(beta_start, beta_end, n, scaled):
    if scaled:
        betas = [(beta_start**0.5 + (beta_end**0.5 - beta_start**0.5) * i / (n - 1)) ** 2 for i in range(n)]
    else:
        betas = [beta_start + (beta_end - beta_start) * i / (n - 1) for i in range(n)]
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(prod)
    return torch.tensor(out, dtype=torch.float64)


def _gaussian_denoiser(sched, mu=MU, sd=SD):
    def denoise(x, t):
        a, s = (v.item() for v in sched.alpha_sigma(float(t)))
        return mu + a * sd**2 / (a * a * sd**2 + s * s) * (x - a * mu)

    return denoise


def _exact_start(sched, ts, eps, mu=MU, sd=SD):
    """x at ts[0] with the exact marginal N(alpha mu, alpha^2 s^2 + sigma^2), as a function of the noise."""
    a, s = (v.item() for v in sched.alpha_sigma(float(ts[0])))
    return a * mu + math.sqrt(a * a * sd * sd + s * s) * eps


def _affine_fit(sampler, sched, steps, **opts):
    """(offset, slope) of the deterministic map noise -> sample, whose ideal value is (MU, SD)."""
    ts = sampling_times(sched, steps)
    eps = torch.linspace(-2.0, 2.0, 5, dtype=torch.float64).view(5, 1, 1, 1, 1).expand(5, 1, 2, 1, 1)
    out = sampler(_gaussian_denoiser(sched), _exact_start(sched, ts, eps), ts, sched, **opts)
    slope = (out[-1] - out[0]).mean().item() / 4.0
    offset = out[2].mean().item()
    assert torch.allclose(out, offset + slope * eps, atol=1e-9)  # affine, as it must be
    return offset, slope


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"objective": "x0"}, "objective must be one of"),
        ({"schedule": "cosine"}, "schedule must be one of"),
        ({"objective": "flow"}, "does not go with schedule"),
        ({"schedule": "flow"}, "does not go with schedule"),
        ({"zero_terminal_snr": True}, "needs objective 'v'"),
        ({"objective": "flow", "schedule": "flow", "zero_terminal_snr": True}, "for VP schedules"),
        ({"flow_shift": 3.0}, "only applies to schedule 'flow'"),
        ({"beta_start": 0.03}, "beta_start < beta_end"),
        ({"min_snr_gamma": 0.0}, "min_snr_gamma must be > 0"),
        ({"timestep_sampling": "cosmap"}, "timestep_sampling must be one of"),
    ],
)
def test_config_validate_errors(kwargs, words):
    with pytest.raises(UserError, match=words) as e:
        DiffusionConfig(**kwargs).validate()
    assert "\n" not in str(e.value)


def test_config_loads_from_overrides():
    cfg = load_config(DiffusionConfig, None, ["objective=v", "zero_terminal_snr=true", "min_snr_gamma=5"])
    assert (cfg.objective, cfg.zero_terminal_snr, cfg.min_snr_gamma) == ("v", True, 5.0)
    with pytest.raises(UserError):
        load_config(DiffusionConfig, None, ["objective=flow"])


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["eps-linear", "eps-scaled"])
def test_vp_alphas_cumprod_match_ddpm_formula(name):
    cfg, sched = CONFIGS[name], _sched(name)
    ref = _textbook_alphas_cumprod(cfg.beta_start, cfg.beta_end, 1000, scaled=cfg.schedule == "scaled_linear")
    assert torch.allclose(sched.alphas_cumprod, ref, rtol=1e-12, atol=0)
    grid = torch.arange(1, 1001, dtype=torch.float64) / 1000  # Ho's step k at t = k / N
    alpha, sigma = sched.alpha_sigma(grid)
    assert torch.allclose(alpha**2, ref, rtol=1e-12, atol=0)
    assert torch.allclose(sigma**2, 1 - ref, rtol=1e-12, atol=1e-15)
    assert sched.model_time(grid).tolist() == list(range(1000))  # diffusers' integer index
    assert [v.item() for v in sched.alpha_sigma(0.0)] == [1.0, 0.0]  # t = 0 is clean data


def test_zero_terminal_snr_rescale():
    plain, zsnr = _sched("v-linear"), _sched("v-zero-snr")
    a, s = zsnr.alpha_sigma(1.0)
    assert a.item() == 0.0 and s.item() == 1.0
    assert torch.isclose(zsnr.alphas_cumprod[0], plain.alphas_cumprod[0], rtol=1e-12)  # alpha(1/N) kept
    # Lin et al. Algorithm 1: sqrt(alpha-bar) is mapped affinely so that the ends go to (a0, 0)
    a_old, a_new = plain.alphas_cumprod.sqrt(), zsnr.alphas_cumprod.sqrt()
    ref = (a_old - a_old[-1]) * a_old[0] / (a_old[0] - a_old[-1])
    assert torch.allclose(a_new, ref, atol=1e-12)


def test_flow_shift():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(shift_time(t, 3.0), 3 * t / (1 + 2 * t))
    assert torch.equal(shift_time(t, 1.0), t)
    assert shift_time(t, 3.0)[[0, -1]].tolist() == [0.0, 1.0]
    assert (shift_time(t, 3.0)[1:-1] > t[1:-1]).all()  # shift > 1: more steps at high noise
    ts = sampling_times(_sched("flow-shift3"), 10)
    assert torch.allclose(ts, shift_time(torch.linspace(1, 0, 11, dtype=torch.float64), 3.0))
    assert torch.allclose(_sched("flow").model_time(ts), ts * 1000)  # SD3: timestep = sigma * 1000


@pytest.mark.parametrize("name", list(CONFIGS))
def test_log_snr_decreases(name):
    sched = _sched(name)
    t = torch.linspace(0, 1, 4001, dtype=torch.float64)  # off the VP grid too (interpolation)
    lam = sched.log_snr(t)
    assert lam[0] == math.inf
    finite = lam[1:-1]
    assert torch.isfinite(finite).all() and (finite[1:] < finite[:-1]).all()
    assert lam[-1] < finite[-1]
    alpha, sigma = sched.alpha_sigma(t)
    unit = alpha**2 + sigma**2 if sched.kind == "vp" else alpha + sigma
    assert torch.allclose(unit, torch.ones_like(t))


def test_sampling_times_vp_trailing():
    sched = _sched("eps-linear")
    ts = sampling_times(sched, 10)
    assert ts[0] == 1 and ts[-1] == 0 and len(ts) == 11
    assert sched.model_time(ts[:-1]).tolist() == list(range(999, 0, -100))
    steps = 7  # diffusers "trailing": round(arange(N, 0, -N / steps)) - 1
    ref = torch.round(torch.arange(1000, 0, -1000 / steps, dtype=torch.float64)) - 1
    assert torch.equal(sched.model_time(sampling_times(sched, steps)[:-1]), ref)
    with pytest.raises(UserError):
        sampling_times(sched, 1001)
    with pytest.raises(UserError):
        sampling_times(sched, 0)


# ----------------------------------------------------------------------------- objectives and training


@pytest.mark.parametrize("name", list(CONFIGS))
def test_objective_round_trip(name):
    cfg, sched = CONFIGS[name], _sched(name)
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, 65, dtype=torch.float64)  # includes alpha = 0 at t = 1 for flow / zero SNR
    x0 = torch.randn(65, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(65, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    x_t = add_noise(x0, eps, t, sched)
    alpha, sigma = sched.alpha_sigma(t)
    assert torch.allclose(x_t, alpha.view(-1, 1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1, 1) * eps)
    pred = target(x0, eps, t, sched, cfg.objective)
    assert torch.allclose(pred_to_x0(pred, x_t, t, sched, cfg.objective), x0, atol=1e-9)
    assert torch.allclose(pred_to_eps(pred, x_t, t, sched, cfg.objective), eps, atol=1e-9)


def test_logit_normal_timestep_statistics():
    cfg = DiffusionConfig(objective="flow", schedule="flow", timestep_sampling="logit_normal")
    cfg.logit_mean, cfg.logit_std = 0.5, 0.8
    t = sample_training_times(20000, cfg, NoiseSchedule(cfg), generator=torch.Generator().manual_seed(0))
    z = torch.logit(t)
    assert abs(z.mean().item() - 0.5) < 0.03 and abs(z.std().item() - 0.8) < 0.03
    vp = DiffusionConfig(objective="v", timestep_sampling="logit_normal", logit_mean=0.5, logit_std=0.8)
    t = sample_training_times(20000, vp, NoiseSchedule(vp), generator=torch.Generator().manual_seed(0))
    k = t * 1000
    assert torch.equal(k, k.round()) and k.min() >= 1 and k.max() <= 1000  # on the grid
    assert abs(torch.logit((k - 0.5) / 1000).mean().item() - 0.5) < 0.03


def test_uniform_timestep_sampling():
    cfg = DiffusionConfig()
    sched = NoiseSchedule(cfg)
    t = sample_training_times(20000, cfg, sched, generator=torch.Generator().manual_seed(1))
    index = sched.model_time(t)
    assert index.min() == 0 and index.max() == 999 and abs(index.mean().item() - 499.5) < 10
    again = sample_training_times(20000, cfg, sched, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t, again)


@pytest.mark.parametrize("name", ["eps-linear", "v-linear", "v-zero-snr", "flow", "flow-shift3"])
def test_min_snr_weights(name):
    cfg, sched, gamma = CONFIGS[name], _sched(name), 5.0
    t = torch.linspace(0.001, 1.0, 1000, dtype=torch.float64)
    w = min_snr_weight(t, sched, cfg.objective, gamma)
    alpha, sigma = sched.alpha_sigma(t)
    snr = alpha**2 / sigma**2
    paper = {
        "eps": torch.minimum(snr, torch.tensor(gamma)) / snr,
        "v": torch.minimum(snr, torch.tensor(gamma)) / (snr + 1),
        "flow": torch.minimum(snr, torch.tensor(gamma)) * t**2,  # our choice, see min_snr_weight
    }[cfg.objective]
    assert torch.isfinite(w).all() and torch.allclose(w, paper, atol=1e-12)
    # every objective's weighted loss is the min-SNR weighted x0 loss (Hang et al.)
    g = torch.Generator().manual_seed(0)
    x0, eps, noise = (torch.randn(1000, 8, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = add_noise(x0, eps, t, sched)
    pred = target(x0, eps, t, sched, cfg.objective) + noise
    x0_err = ((pred_to_x0(pred, x_t, t, sched, cfg.objective) - x0) ** 2).mean(1)
    pred_err = (noise**2).mean(1)
    assert torch.allclose(w * pred_err, torch.minimum(snr, torch.tensor(gamma)) * x0_err, rtol=1e-8)


def _oracle(cfg, sched, x0):
    """A network that knows x0 and returns the exact target (it recovers t from the model time)."""

    def model(x_t, model_time, scale=1.0):
        m = model_time.double()
        t = (m + 1) / 1000 if sched.kind == "vp" else m / 1000
        alpha, sigma = sched.alpha_sigma(t)
        eps = (x_t - alpha.view(-1, 1, 1, 1, 1) * x0) / sigma.view(-1, 1, 1, 1, 1)
        return scale * target(x0, eps, t, sched, cfg.objective)

    return model


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_training_loss_zero_for_oracle(name, gamma):
    cfg = DiffusionConfig(**{**CONFIGS[name].__dict__, "min_snr_gamma": gamma})
    sched = NoiseSchedule(cfg)
    x0 = torch.randn(16, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss, info = training_loss(_oracle(cfg, sched, x0), x0, cfg, generator=torch.Generator().manual_seed(1))
    assert loss.shape == (16,) and loss.max().item() < 1e-10
    assert info["t"].shape == (16,) and info["weight"].shape == (16,)
    if gamma is not None:
        assert torch.allclose(info["weight"].double(), min_snr_weight(info["t"], sched, cfg.objective, gamma))
    wrong, _ = training_loss(
        _oracle(cfg, sched, x0), x0, cfg, generator=torch.Generator().manual_seed(1), scale=2
    )
    same, _ = training_loss(
        _oracle(cfg, sched, x0), x0, cfg, generator=torch.Generator().manual_seed(1), scale=2
    )
    assert (wrong > 0).any() and torch.equal(wrong, same)  # model kwargs reach the model; seeded


def test_loss_mask_excludes_conditioning_frames():
    cfg = CONFIGS["v-linear"]
    sched = NoiseSchedule(cfg)
    x0 = torch.randn(2, 3, 4, 2, 2, dtype=torch.float64)
    exact = _oracle(cfg, sched, x0)

    def bad_first_frame(x_t, model_time):
        out = exact(x_t, model_time).clone()
        out[:, :, 0] += 10.0  # wrong only on the conditioning frame
        return out

    def loss(mask):
        return training_loss(
            bad_first_frame, x0, cfg, generator=torch.Generator().manual_seed(0), loss_mask=mask
        )[0]

    mask = torch.ones(2, 1, 4, 1, 1)
    mask[:, :, 0] = 0
    assert loss(mask).max() < 1e-10
    assert torch.allclose(loss(None), torch.full((2,), 25.0, dtype=torch.float64))  # 100 on 1 of 4 frames
    assert torch.allclose(loss(1 - mask), torch.full((2,), 100.0, dtype=torch.float64))
    assert torch.equal(loss(torch.zeros(2, 1, 4, 1, 1)), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["eps-linear", "flow"])
def test_make_denoiser_model_time_and_x0(name):
    cfg, sched = CONFIGS[name], _sched(name)
    seen = []

    def model(x, model_time, y):
        seen.append(model_time)
        return 0.1 * x + y

    x = torch.randn(3, 2, 1, 2, 2)
    x0 = make_denoiser(model, cfg, sched)(x, 0.25, y=1.0)
    assert seen[0].dtype == torch.float32 and seen[0].tolist() == [249.0 if sched.kind == "vp" else 250.0] * 3
    assert torch.allclose(x0, pred_to_x0(0.1 * x + 1.0, x, 0.25, sched, cfg.objective))


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_deterministic_samplers_reproduce_gaussian(name, sampler):
    offset, slope = _affine_fit(SAMPLERS[sampler], _sched(name), 50)
    assert abs(offset - MU) < 1e-6  # the mean is carried exactly
    assert abs(slope - SD) < 0.07 * SD  # first-order samplers are ~6% off at 50 steps, DPM-Solver++ ~1%


@pytest.mark.parametrize("name", list(CONFIGS))
def test_dpmpp_2m_beats_first_order_in_few_steps(name):
    sched = _sched(name)
    err = {s: abs(_affine_fit(SAMPLERS[s], sched, 8)[1] - SD) for s in DETERMINISTIC}
    assert err["dpmpp_2m"] < err["ddim"] and math.isclose(err["euler"], err["ddim"], rel_tol=1e-9)
    assert abs(_affine_fit(sample_dpmpp_2m, sched, 50)[1] - SD) < 0.05 * SD


@pytest.mark.parametrize("name", ["eps-linear", "v-zero-snr", "flow-shift3"])
def test_equivalences_euler_ddim(name):
    """Euler = DDIM(eta=0) and Euler ancestral(eta) = DDIM(eta), same noise (Karras et al. 2022)."""
    sched = _sched(name)
    ts = sampling_times(sched, 12)
    x = torch.randn(4, 2, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    den = _gaussian_denoiser(sched)
    assert torch.allclose(sample_euler(den, x, ts, sched), sample_ddim(den, x, ts, sched), atol=1e-10)
    for eta in (0.5, 1.0):
        anc = sample_euler_ancestral(den, x, ts, sched, eta=eta, generator=torch.Generator().manual_seed(3))
        ddim = sample_ddim(den, x, ts, sched, eta=eta, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(anc, ddim, atol=1e-10)


@pytest.mark.parametrize("name", ["eps-linear", "v-zero-snr", "flow"])
def test_euler_ancestral_matches_distribution(name):
    sched = _sched(name)
    err = []
    for steps in (50, 200):
        ts = sampling_times(sched, steps)
        g = torch.Generator().manual_seed(0)
        x = _exact_start(sched, ts, torch.randn(40000, generator=g, dtype=torch.float64))
        out = sample_euler_ancestral(_gaussian_denoiser(sched), x, ts, sched, generator=g)
        assert abs(out.mean().item() - MU) < 0.01  # 4 standard errors
        err.append(abs(out.std().item() - SD) / SD)
    # ancestral steps with the exact posterior mean but no x0 uncertainty in their variance come out too
    # narrow (Bao et al. 2022, Analytic-DPM): ~6-11% at 50 steps here, shrinking like 1 / steps
    assert err[0] < 0.12 and err[1] < 0.05 and err[1] < err[0] / 2


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_point_mass_is_reproduced(name, sampler):
    sched = _sched(name)
    xs = []
    x = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    out = SAMPLERS[sampler](
        lambda x, t: torch.full_like(x, 0.3), x, sampling_times(sched, 5), sched,
        generator=torch.Generator().manual_seed(1), callback=lambda i, t, x, x0: xs.append(x),
    )  # fmt: skip
    assert len(xs) == 5 and all(torch.isfinite(v).all() for v in xs)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "euler_ancestral"])
def test_same_seed_same_samples(sampler):
    sched = _sched("flow")
    ts, x = sampling_times(sched, 6), torch.randn(2, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return SAMPLERS[sampler](_gaussian_denoiser(sched), x, ts, sched, generator=g, eta=1.0)

    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))


def test_sampler_errors():
    with pytest.raises(UserError, match="unknown sampler"):
        get_sampler("plms")
    assert get_sampler("euler") is sample_euler
    with pytest.raises(ValueError, match="descending"):
        sample_euler(lambda x, t: x, torch.zeros(1), [0.0, 0.5], _sched("flow"))


# ----------------------------------------------------------------------------- guidance


def _counting_model(calls):
    def model(x, model_time, y, flag=None):
        calls.append(x.shape[0])
        return 0.5 * x + y.view(-1, 1, 1, 1, 1)

    return model


@pytest.mark.parametrize("name", ["eps-linear", "flow"])
def test_cfg_denoiser(name):
    cfg, sched, calls = CONFIGS[name], _sched(name), []
    denoise = make_denoiser(_counting_model(calls), cfg, sched)
    x = torch.randn(3, 2, 2, 2, 2, dtype=torch.float64)
    cond, uncond = {"y": torch.ones(3), "flag": None}, {"y": -torch.ones(3), "flag": None}
    x0_c, x0_u = denoise(x, 0.5, **cond), denoise(x, 0.5, **uncond)
    calls.clear()
    assert torch.allclose(cfg_denoiser(denoise, cond, uncond, 1.0)(x, 0.5), x0_c)
    assert torch.allclose(cfg_denoiser(denoise, cond, uncond, 0.0)(x, 0.5), x0_u)
    assert torch.allclose(cfg_denoiser(denoise, cond, uncond, 3.0)(x, 0.5), x0_u + 3 * (x0_c - x0_u))
    assert calls == [6, 6, 6]  # one forward per step on [cond; uncond]
    calls.clear()
    sample_dpmpp_2m(cfg_denoiser(denoise, cond, uncond, 5.0), x, sampling_times(sched, 7), sched)
    assert calls == [6] * 7


def test_cfg_on_x0_equals_cfg_on_eps():
    cfg, sched = CONFIGS["eps-linear"], _sched("eps-linear")
    model = _counting_model([])
    x, t, scale = torch.randn(3, 2, 2, 2, 2, dtype=torch.float64), 0.3, 4.0
    guided = cfg_denoiser(
        make_denoiser(model, cfg, sched), {"y": torch.ones(3)}, {"y": torch.zeros(3)}, scale
    )
    mt = sched.model_time(torch.full((3,), t)).float()
    eps_c, eps_u = model(x, mt, torch.ones(3)), model(x, mt, torch.zeros(3))
    eps_g = eps_u + scale * (eps_c - eps_u)
    assert torch.allclose(guided(x, t), pred_to_x0(eps_g, x, t, sched, "eps"), atol=1e-10)


def test_cfg_rejects_mismatched_conditioning():
    with pytest.raises(ValueError, match="same keys"):
        cfg_denoiser(lambda x, t, **k: x, {"y": torch.ones(1)}, {}, 2.0)
