"""VAE training: L1 + KL (+ LPIPS with user weights, + PatchGAN from a chosen step), Adam betas (0.5, 0.9),
joint image + video batches, EMA, and EasyAnimate's second stage (decoder-only fine-tune).

    longvideo train configs/shapes/vae.yaml [key=value ...]

Data is the shapes world rendered in memory. Batch `step` depends only on (seed, step), and the sampling
noise of step `step` comes from a generator seeded the same way, so a resumed run sees exactly the batches
and noise the uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from longvideo.data.shapes import ShapesConfig, sample_video, video_rng
from longvideo.errors import UserError
from longvideo.models.vae.io import save_vae
from longvideo.models.vae.model import CausalVAE, VAEConfig
from longvideo.pipelines.folder import load_vae
from longvideo.train import loop, schedule
from longvideo.train.ema import EMA
from longvideo.train.salient import salient_weights
from longvideo.train.vae_losses import (
    PatchDiscriminator,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    vae_loss,
)


@dataclass
class VAETrainConfig:
    task: str = "vae"
    model: VAEConfig = field(default_factory=VAEConfig)
    data: ShapesConfig = field(default_factory=ShapesConfig)
    out: str = "runs/vae"
    seed: int = 0
    steps: int = 1000
    video_frames: int = 9  # 4k+1 frames per video sample
    batch_size: int = 4
    image_batch_size: int = 8
    image_every: int = 3  # every n-th step is an image batch (T = 1); 0 = videos only
    max_start_frame: int = 64  # clips start at a random frame in [0, this): reflections, crossings
    lr: float = 2e-4
    # (0.5, 0.9): the seeds' recipe, made for the GAN phase; without a discriminator (0.9, 0.999) at a lower
    # lr trains far faster (benchmarks/probes/vae_overfit.py; the figures are in BENCHMARKS.md)
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    warmup: int = 100
    min_lr_ratio: float = 0.1  # cosine decay to lr * this at the last step
    grad_clip: float = 1.0
    kl_weight: float = 1e-6
    mse_weight: float = 0.0  # an MSE term beside L1 (see vae_losses.vae_loss for why)
    # L1/MSE weight 1 + salient_boost on the pixels that differ from the clip's median colour (the objects on
    # a plain background), grown by salient_dilate px (the ring a decoder blurs them into); 0 = plain mean.
    # train/salient.py, as the DiT trainer's salient_boost on latents.
    salient_boost: float = 0.0
    salient_ratio: float = 4.0
    salient_dilate: int = 1
    # Decode a posterior sample (a VAE) or its mean (a KL-regularised autoencoder). Why the switch: with a
    # tiny KL weight the posterior std shrinks only slowly, and until it does the sampling noise drowns the
    # few latent dimensions that carry colour; a second stage on the mean sharpens them (shapes VAE).
    sample_posterior: bool = True
    lpips_weights: str | None = None  # VGG16 + LPIPS heads (safetensors); None = no LPIPS term
    lpips_weight: float = 0.1
    gan_start: int = -1  # step from which the PatchGAN joins; -1 = never
    gan_weight: float = 0.1
    # Scale the generator's GAN term by |grad nll| / |grad gan| at the decoder's last layer (the rule of
    # taming-transformers, kept by Open-Sora-Plan's LPIPSWithDiscriminator), so gan_weight is a ratio of
    # gradient sizes that means the same at any loss scale; False = the fixed gan_weight.
    gan_adaptive: bool = False
    disc_lr: float = 2e-4
    ema_decay: float = 0.999
    stage: str = "full"  # "full" | "decoder" (freeze encoder + quant_conv; EasyAnimate stage 2)
    init: str | None = None  # a VAE folder (or bundled name) to start from
    stop_at: int = 0  # stop (checkpoint + export) after this step; the lr schedule still spans `steps`
    save_every: int = 500
    keep: int = 3
    max_bad_steps: int = 5  # stop after this many steps in a row with a non-finite loss or gradient
    log_every: int = 20
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    export: str | None = None  # write the EMA weights here at the end (config.json + model.safetensors)
    export_dtype: str = "float32"

    def validate(self) -> VAETrainConfig:
        from longvideo import limits

        if self.task != "vae":
            raise UserError(f"task {self.task!r}: this trainer handles task 'vae'")
        limits.check_types(self)  # first: numbers finite (NaN passes the range checks below)
        if min(self.kl_weight, self.mse_weight, self.lpips_weight, self.gan_weight) < 0:
            raise UserError("kl_weight, mse_weight, lpips_weight and gan_weight must be >= 0")
        if not self.disc_lr > 0:
            raise UserError(f"disc_lr must be > 0, got {self.disc_lr}")
        limits.check_optim(self)
        if self.gan_start < -1 or self.image_every < 0 or self.max_start_frame < 1:
            raise UserError("gan_start must be >= -1 (-1 = never), image_every >= 0 and max_start_frame >= 1")
        limits.check_folder("out", self.out)
        limits.check_folder("export", self.export)
        if self.video_frames < 1 or (self.video_frames - 1) % self.model.temporal_factor:
            raise UserError(f"video_frames must be 1 + a multiple of {self.model.temporal_factor}")
        if self.salient_boost < 0 or self.salient_ratio <= 0 or self.salient_dilate < 0:
            raise UserError("salient_boost and salient_dilate must be >= 0, salient_ratio > 0")
        if self.stage not in ("full", "decoder"):
            raise UserError(f"stage must be 'full' or 'decoder', got {self.stage!r}")
        if self.steps < 1 or self.batch_size < 1 or self.image_batch_size < 1:
            raise UserError("steps, batch_size and image_batch_size must be >= 1")
        if self.export_dtype not in ("float32", "bfloat16", "float16"):
            raise UserError(f"export_dtype must be float32, bfloat16 or float16, got {self.export_dtype!r}")
        self.model.validate()
        limits.check_vae_training(self)  # last: on a valid config
        return self


def shapes_batch(cfg: VAETrainConfig, step: int) -> torch.Tensor:
    """The batch of step `step`: (B, 3, T, H, W) in [-1, 1]; images (T = 1) on every `image_every`-th step."""
    image = cfg.image_every > 0 and step % cfg.image_every == 0
    n, t = (cfg.image_batch_size, 1) if image else (cfg.batch_size, cfg.video_frames)
    rng = np.random.default_rng([cfg.seed, step, 7])
    clips = []
    for i in range(n):
        video = sample_video(cfg.data, video_rng(cfg.seed, step * 64 + i))
        clips.append(video.render_tensor(t, start=int(rng.integers(cfg.max_start_frame))))
    return torch.stack(clips)


def lr_at(cfg: VAETrainConfig, step: int) -> float:
    return schedule.lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio)


class VAETrainer:
    def __init__(self, cfg: VAETrainConfig):
        self.cfg = cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.vae = load_vae(cfg.init).train() if cfg.init else CausalVAE(cfg.model)
        self.model_cfg = self.vae.cfg  # the init's config when starting from one (cfg.model is then unused)
        if cfg.stage == "decoder":
            for name in CausalVAE.LATENT_PATH:
                getattr(self.vae, name).requires_grad_(False)
        params = [p for p in self.vae.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
        # EMA over the trained parameters only: a decoder-only stage keeps the encoder (the latent space a
        # DiT was trained on) bit-identical
        trained = [n for n, p in self.vae.named_parameters() if p.requires_grad]
        self.ema = EMA(self.vae, cfg.ema_decay, keys=trained)
        self.lpips = None
        if cfg.lpips_weights:
            from longvideo.eval.metrics import LPIPS

            self.lpips = LPIPS(cfg.lpips_weights)
        self.disc = self.opt_d = None
        if cfg.gan_start >= 0:
            self.disc = PatchDiscriminator(self.model_cfg.in_channels)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=tuple(cfg.betas))
        self.loop = loop.LoopConfig.of(cfg)

    # -- state ------------------------------------------------------------------------------------------

    def checkpoint_state(self) -> loop.CheckpointState:
        tensors = {"model": self.vae.state_dict(), "ema": self.ema.state_dict()}
        objects = {"optim": self.opt.state_dict()}
        if self.disc is not None:
            tensors["disc"] = self.disc.state_dict()
            objects["optim_d"] = self.opt_d.state_dict()
        meta = {"ema_updates": self.ema.updates, "config": asdict(self.cfg)}
        return loop.CheckpointState(tensors, objects, meta)

    def load_checkpoint_state(self, state: loop.CheckpointState) -> None:
        loop.check_resumable(state, self.vae.state_dict(), asdict(self.model_cfg), self.cfg.out)
        self.vae.load_state_dict(state.tensors["model"])
        self.ema.load_state_dict(state.tensors["ema"], state.meta["ema_updates"])
        self.opt.load_state_dict(state.objects["optim"])
        if self.disc is not None and "disc" in state.tensors:
            self.disc.load_state_dict(state.tensors["disc"])
            self.opt_d.load_state_dict(state.objects["optim_d"])

    def fit(self, progress: bool = True) -> dict:
        return loop.fit(self, self.loop, name="train vae", progress=progress)

    # -- one step ---------------------------------------------------------------------------------------

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        x = shapes_batch(cfg, step)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # posterior noise of this step
        rec, post = self.vae(x, sample=cfg.sample_posterior, generator=gen)
        weight = None
        if cfg.salient_boost:
            weight = salient_weights(x, cfg.salient_boost, cfg.salient_ratio, cfg.salient_dilate)
        loss, logs = vae_loss(
            x, rec, post.kl(), cfg.kl_weight, self.lpips, cfg.lpips_weight, cfg.mse_weight, weight=weight
        )
        gan = self.disc is not None and step >= cfg.gan_start
        if gan:
            g_loss = hinge_g_loss(self.disc(rec))
            g_weight = cfg.gan_weight
            if cfg.gan_adaptive:
                g_weight *= adaptive_gan_weight(loss, g_loss, self.vae.decoder.conv_out.conv.weight)
                logs["g_weight"] = g_weight
            loss = loss + g_weight * g_loss
            logs["g"] = g_loss.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf  # inf: measured, not clipped
        logs["grad_norm"] = gn = float(torch.nn.utils.clip_grad_norm_(self.vae.parameters(), max_norm))
        lr = self.opt.param_groups[0]["lr"]
        if not (math.isfinite(loss.item()) and math.isfinite(gn)):  # a non-finite step changes nothing
            self.opt.zero_grad(set_to_none=True)
            return logs | {"loss": loss.item(), "lr": lr, "frames": x.shape[2], "skipped": True}
        self.opt.step()
        self.ema.update(self.vae)
        if gan:
            d_loss = hinge_d_loss(self.disc(x), self.disc(rec.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            logs["d"] = d_loss.item()
        return logs | {"loss": loss.item(), "lr": self.opt.param_groups[0]["lr"], "frames": x.shape[2]}

    def export(self, folder: str | Path) -> Path:
        """The EMA weights as a VAE folder (what `load_vae` and pipelines read)."""
        vae = CausalVAE(self.model_cfg)
        vae.load_state_dict(self.vae.state_dict())  # frozen parts as they are
        self.ema.copy_to(vae)
        return save_vae(vae, folder, dtype=getattr(torch, self.cfg.export_dtype))
