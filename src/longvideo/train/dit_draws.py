"""What one DiT training step draws, and its loss.

Sample j of global batch `step` draws everything random about it -- t, the noise, its conditioning task,
whether its caption is dropped, the known frames' noise -- from one generator seeded by (seed, step, j).
The loss of a step is then the same whatever the world size and the micro-batching, and a resumed run
replays exactly the draws of the uninterrupted one.

Conditioning tasks (one code path with the pipeline, pipelines/inputs.build_cond): text-to-video (nothing
known), image-to-video (latent frame 0 known) and continuation (the first 1..K/2 latent frames known); the
DiT sees [known latents | mask] through its cond channels and learns the whole clip (known frames too).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from longvideo.diffusion import NoiseSchedule, add_noise, sample_training_times, training_loss
from longvideo.parallel.apply import unwrap
from longvideo.pipelines.inputs import build_cond
from longvideo.train.dit_config import DiTTrainConfig
from longvideo.train.salient import salient_weights


@dataclass(frozen=True)
class SampleDraw:
    """The randomness of one training sample (latents (C, K, h, w))."""

    t: float  # diffusion time in (0, 1)
    eps: Tensor  # (C, K, h, w) the noise
    known: int  # latent frames given as conditioning: 0 (T2V), 1 (I2V) or 1..K/2 (continuation)
    drop_caption: bool  # train on "" (classifier-free guidance)
    known_t: float | None = None  # cond_noise: the known frames are noised to this time ...
    known_eps: Tensor | None = None  # ... with this noise (C, known, h, w); None = clean


def sample_draw(cfg: DiTTrainConfig, step: int, j: int, latent_shape: tuple[int, ...], sched) -> SampleDraw:
    """Sample j of global batch `step` (a function of (cfg.seed, step, j) only)."""
    seed = int(np.random.SeedSequence([cfg.seed, step, j]).generate_state(1)[0])
    g = torch.Generator().manual_seed(seed)
    t = float(sample_training_times(1, cfg.diffusion, sched, generator=g)[0])
    eps = torch.randn(latent_shape, generator=g)
    u, k = torch.rand(2, generator=g).tolist()
    frames = latent_shape[1]
    if u < cfg.p_image_cond or frames == 1:
        known = 1 if u < cfg.p_image_cond else 0
    elif u < cfg.p_image_cond + cfg.p_continue:
        known = 1 + int(k * max(1, frames // 2))  # 1 .. K/2 frames
    else:
        known = 0
    drop = torch.rand(1, generator=g).item() < cfg.text_drop
    if not (known and cfg.cond_noise > 0):
        return SampleDraw(t, eps, known, drop)
    # drawn last: runs without cond_noise keep their exact random stream
    known_t = torch.rand(1, generator=g).item() * cfg.cond_noise
    known_eps = torch.randn((latent_shape[0], known, *latent_shape[2:]), generator=g)
    return SampleDraw(t, eps, known, drop, known_t, known_eps)


def batch_cond(latents: Tensor, draws: list[SampleDraw], sched: NoiseSchedule) -> Tensor:
    """[known latents | mask] (b, C + 1, K, h, w) of a micro-batch, through the pipeline's build_cond."""
    c, k = latents.shape[1:3]
    conds = []
    for i, d in enumerate(draws):
        z = None
        if d.known:
            z = latents[i, :, : d.known]  # (C, known, h, w)
            z = z if d.known_eps is None else add_noise(z, d.known_eps, d.known_t, sched)
            z = z[None]
        conds.append(build_cond(z, k, c, tuple(latents.shape[3:])))
    return torch.cat(conds)


def micro_batch_loss(
    model: nn.Module,
    cfg: DiTTrainConfig,
    sched: NoiseSchedule,
    draws: list[SampleDraw],
    latents: Tensor,
    text: Tensor,
    mask: Tensor,
    empty_text: tuple[Tensor, Tensor],
    amp: torch.dtype | None,
) -> Tensor:
    """Per-sample losses (b,) of one micro-batch through `diffusion.training_loss`.

    latents (b, C, K, h, w) scaled, text (b, L, D), mask (b, L) on the CPU; the model's device is used.
    """
    dev = next(model.parameters()).device
    c = latents.shape[1]
    text, mask = text.clone(), mask.clone()
    for i, d in enumerate(draws):
        if d.drop_caption:
            text[i], mask[i] = empty_text
    kwargs = {"text": text.to(dev), "text_mask": mask.to(dev)}
    if unwrap(model).cfg.cond_channels:
        kwargs["cond"] = batch_cond(latents, draws, sched).to(dev)
    x0 = latents.to(dev)

    def model_fn(x_t: Tensor, model_t: Tensor, **kw: Tensor) -> Tensor:
        ctx = torch.autocast(dev.type, amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            return model(x_t, model_t, **kw)[:, :c]  # learn_sigma models: the variance half is not trained

    weight = salient_weights(x0, cfg.salient_boost, cfg.salient_ratio) if cfg.salient_boost else None
    t = torch.tensor([d.t for d in draws], dtype=torch.float64)
    eps = torch.stack([d.eps for d in draws])
    loss, _ = training_loss(model_fn, x0, cfg.diffusion, sched=sched, t=t, eps=eps, loss_mask=weight,
                            **kwargs)  # fmt: skip
    return loss
