"""The noise process, objectives, training loss, timestep sampling, samplers and guidance of a diffusion
model, independent of any network (a model is any callable).

    cfg = DiffusionConfig(objective="flow", schedule="flow", flow_shift=3.0, timestep_sampling="logit_normal")
    sched = NoiseSchedule(cfg)
    loss, info = training_loss(model, latents, cfg, sched=sched, text=text_states)   # (B,)
    denoise = cfg_denoiser(make_denoiser(model, cfg, sched), {"text": pos}, {"text": neg}, scale=6.0)
    video = sample_dpmpp_2m(denoise, noise, sampling_times(sched, 25), sched)
"""

from longvideo.diffusion.config import DiffusionConfig
from longvideo.diffusion.guidance import cfg_denoiser
from longvideo.diffusion.objectives import (
    add_noise,
    make_denoiser,
    min_snr_weight,
    pred_to_eps,
    pred_to_x0,
    target,
    training_loss,
    weighted_mean,
)
from longvideo.diffusion.samplers import (
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
)
from longvideo.diffusion.schedule import (
    NoiseSchedule,
    rescale_zero_terminal_snr,
    sample_training_times,
    sampling_times,
    shift_time,
    vp_alphas_cumprod,
)

__all__ = [
    "SAMPLERS",
    "DiffusionConfig",
    "NoiseSchedule",
    "add_noise",
    "cfg_denoiser",
    "get_sampler",
    "make_denoiser",
    "min_snr_weight",
    "pred_to_eps",
    "pred_to_x0",
    "rescale_zero_terminal_snr",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_training_times",
    "sampling_times",
    "shift_time",
    "target",
    "training_loss",
    "vp_alphas_cumprod",
    "weighted_mean",
]
