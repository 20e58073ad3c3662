"""Video DiT training: one process on a CPU up to many GPUs under torchrun, through the one loop (loop.py).

    longvideo train CONFIG.yaml [key=value ...]          # task: dit (dit_config.py)
    torchrun --nproc-per-node 8 -m longvideo train CONFIG.yaml parallel=fsdp mixed_precision=bf16
    torchrun --nproc-per-node 8 -m longvideo train CONFIG.yaml parallel=fsdp sp=4   # dp 2 x sp 4

What a step does: take global batch `step` from the sampler (a function of (seed, step) only), give data-
parallel rank r its slice (the sp ranks of one dp rank take the same slice and split each clip's frames,
parallel/sp.py), and for every sample j of the global batch draw its randomness from a generator
seeded by (seed, step, j) (dit_draws.py). The loss of a step is therefore the same whatever the world size and
however the batch is split into micro-batches, and a resumed run replays exactly the batches and noise the
uninterrupted run would have drawn (tests/test_train_dit.py checks both).

The trainer builds every part -- the frozen VAE and text encoder, the data, the DiT (fresh, from `init`,
extended, with LoRA) -- checks that they fit together, and hands the DiT to `parallel.parallelize`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from pathlib import Path

import torch

from longvideo.diffusion import NoiseSchedule
from longvideo.errors import UserError
from longvideo.extend.exvideo import extend_dit, trainable_globs
from longvideo.models.dit import DiTConfig, VideoDiT, build_dit
from longvideo.models.text import TextEncoder
from longvideo.models.vae.model import CausalVAE
from longvideo.parallel import (
    DistEnv,
    ParallelConfig,
    ParallelDims,
    all_reduce_sum,
    barrier,
    build_mesh,
    full_optimizer_state,
    full_state_dict,
    full_tensor,
    init_distributed,
    like,
    load_full_optimizer_state,
    load_full_state_dict,
    no_sync,
    parallelize,
    unwrap,
)
from longvideo.pipelines import folder as fs
from longvideo.pipelines.folder import load_vae
from longvideo.train import loop, schedule
from longvideo.train.dit_config import PRECISIONS, DiTDataConfig, DiTTrainConfig
from longvideo.train.dit_data import LatentBatches, make_text_encoder
from longvideo.train.dit_draws import micro_batch_loss, sample_draw
from longvideo.train.ema import EMA
from longvideo.train.warm_start import load_init

__all__ = ["DiTDataConfig", "DiTTrainConfig", "DiTTrainer"]


def check_model_config(model: DiTConfig, vae: CausalVAE, text_encoder: TextEncoder) -> None:
    """The DiT's input sizes must be the frozen parts' own: a one-line error naming the value to set."""
    c, d = vae.cfg.latent_channels, text_encoder.dim
    if model.in_channels != c:
        raise UserError(f"model.in_channels is {model.in_channels}, the VAE makes {c} latent channels: "
                        f"set model.in_channels={c}")  # fmt: skip
    if model.cond_channels not in (0, c + 1):
        raise UserError(f"model.cond_channels is {model.cond_channels}: 0 (text-to-video only) or {c + 1} "
                        f"([{c} known latents | mask]) for image-to-video and continuation")  # fmt: skip
    if model.text_dim != d:
        raise UserError(f"model.text_dim is {model.text_dim}, the text encoder gives {d}-d states: "
                        f"set model.text_dim={d}")  # fmt: skip


class DiTTrainer:
    def __init__(self, cfg: DiTTrainConfig, env: DistEnv | None = None):
        self.cfg = cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.env = env if env is not None else init_distributed(cfg.device)
        self.mesh = build_mesh(self.env, ParallelDims(dp=-1, sp=cfg.sp))
        dp = self.mesh.size("dp")
        if cfg.batch_size % (dp * cfg.grad_accum):
            raise UserError(f"batch_size {cfg.batch_size} must be a multiple of data-parallel ranks x "
                            f"grad_accum ({dp} x {cfg.grad_accum})")  # fmt: skip
        self.loop = loop.LoopConfig.of(cfg)
        self.sched = NoiseSchedule(cfg.diffusion)
        self.init = fs.resolve_pipeline(cfg.init) if cfg.init else None  # resolved once
        # the frozen parts
        self.vae = load_vae(cfg.vae).to(self.env.device)
        self.text_encoder = make_text_encoder(cfg.text_encoder, cfg.text_max_length, cfg.model.text_dim,
                                              self.init)  # fmt: skip
        check_model_config(cfg.model, self.vae, self.text_encoder)
        self.batches = LatentBatches(cfg.data, cfg.batch_size, dp, self.vae, self.text_encoder, self.env.main)
        stats = self.batches.channel_stats()
        if cfg.latent_stats and stats is not None and not self.vae.cfg.latents_mean:
            # the DiT learns latents normalised per channel; the exported VAE carries the statistics
            mean, std = stats
            self.vae.cfg = dataclasses.replace(self.vae.cfg, latents_mean=mean, latents_std=std)
        # the DiT
        model = self._build_model()
        # post-tuning trains the family's temporal parts unless `trainable` says otherwise
        extend = trainable_globs(model.cfg, cfg.extend) if cfg.extend.frames else []
        self.trainable = cfg.trainable or extend
        self._freeze(model)
        model.to(self.env.device)
        pcfg = ParallelConfig(cfg.parallel, cfg.activation_checkpointing, ring=cfg.ring)
        self.model = parallelize(model, self.mesh, pcfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise UserError("nothing to train: every parameter is frozen (see freeze / trainable)")
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.ema = self._new_ema()
        self.amp = PRECISIONS[cfg.mixed_precision]
        self.scaler = torch.amp.GradScaler(enabled=self.amp is torch.float16)

    def _build_model(self) -> VideoDiT:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = build_dit(cfg.model, device="cpu")
        if self.init is not None:
            note = load_init(model, fs.load_transformer(self.init / "transformer"))
            if note and self.env.main:
                print(note, flush=True)
        if cfg.extend.frames:
            model = extend_dit(model, cfg.extend)
        if cfg.lora.rank > 0:
            from longvideo.train.lora import add_lora

            model = add_lora(model, cfg.lora)
        return model

    def _new_ema(self) -> EMA:
        """EMA over the trainable parameters only (frozen ones equal the model's at all times)."""
        trainable = [n for n, p in unwrap(self.model).named_parameters() if p.requires_grad]
        return EMA(unwrap(self.model), self.cfg.ema_decay, keys=trainable)

    def _freeze(self, model: torch.nn.Module) -> None:
        if self.cfg.lora.rank > 0:
            return  # add_lora froze everything but the adapters
        for name, p in model.named_parameters():
            frozen = any(fnmatch.fnmatch(name, pat) for pat in self.cfg.freeze)
            if self.trainable:
                frozen = frozen or not any(fnmatch.fnmatch(name, pat) for pat in self.trainable)
            p.requires_grad_(not frozen)

    # -- one step -----------------------------------------------------------------------------------------

    def _micro_batches(self) -> list[list[int]]:
        """This dp rank's sample positions j of a global batch, split into grad_accum micro-batches."""
        per_rank = self.cfg.batch_size // self.mesh.size("dp")
        start = self.mesh.rank("dp") * per_rank
        m = per_rank // self.cfg.grad_accum
        return [list(range(start + i * m, start + (i + 1) * m)) for i in range(self.cfg.grad_accum)]

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        lr = schedule.lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio, cfg.lr_schedule)
        for g in self.opt.param_groups:
            g["lr"] = lr
        indices = self.batches.global_batch(step)
        micro = self._micro_batches()
        total = torch.zeros(1, dtype=torch.float64)
        for i, js in enumerate(micro):
            latents, text, mask = self.batches.load(step, [indices[j] for j in js])
            shape = tuple(latents.shape[1:])
            draws = [sample_draw(cfg, step, j, shape, self.sched) for j in js]
            with no_sync(self.model, i == len(micro) - 1):
                losses = micro_batch_loss(self.model, cfg, self.sched, draws, latents, text, mask,
                                          self.batches.empty_text, self.amp)  # fmt: skip
                # each rank's mean over its samples; DDP / FSDP average over dp ranks -> the global mean
                loss = losses.sum() / (len(js) * len(micro))
                self.scaler.scale(loss).backward()
            total += losses.detach().double().sum().cpu()
        loss = float(all_reduce_sum(total, self.mesh.group("dp"))) / cfg.batch_size  # the same on every rank
        self.scaler.unscale_(self.opt)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf  # inf: measured, not clipped
        gn = float(full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)))
        logs = {"lr": lr, "grad_norm": gn, "loss": loss}
        # a non-finite step changes nothing (fp16: an overflow is the grad scaler's to skip and back off)
        if not math.isfinite(loss) or (not math.isfinite(gn) and not self.scaler.is_enabled()):
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
            return logs | {"skipped": True}
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(unwrap(self.model))
        return logs

    # -- state --------------------------------------------------------------------------------------------

    def _ema_full(self) -> dict[str, torch.Tensor]:
        return {k: full_tensor(v).cpu() for k, v in self.ema.shadow.items()}

    def checkpoint_state(self) -> loop.CheckpointState:
        tensors = {"model": full_state_dict(self.model), "ema": self._ema_full()}
        objects = {"optim": full_optimizer_state(self.model, self.opt), "scaler": self.scaler.state_dict(),
                   "rng": {"torch": torch.get_rng_state()}}  # fmt: skip
        meta = {"ema_updates": self.ema.updates, "config": dataclasses.asdict(self.cfg),
                "world_size": self.env.world_size}  # fmt: skip
        return loop.CheckpointState(tensors, objects, meta)

    def load_checkpoint_state(self, state: loop.CheckpointState) -> None:
        own = unwrap(self.model)
        loop.check_resumable(state, own.state_dict(), dataclasses.asdict(own.cfg), self.cfg.out)
        load_full_state_dict(self.model, state.tensors["model"])
        ema = self._new_ema()  # same sharding as the model
        with torch.no_grad():
            for k, v in ema.shadow.items():
                v.copy_(like(state.tensors["ema"][k].float(), v))
        ema.updates = state.meta["ema_updates"]
        self.ema = ema
        load_full_optimizer_state(self.model, self.opt, state.objects["optim"])
        self.scaler.load_state_dict(state.objects["scaler"])
        torch.set_rng_state(state.objects["rng"]["torch"])

    def fit(self, progress: bool = True) -> dict:
        return loop.fit(self, self.loop, main=self.env.main, name="train dit", progress=progress)

    # -- export -------------------------------------------------------------------------------------------

    def ema_model(self) -> torch.nn.Module:
        """A plain DiT with the EMA weights (LoRA merged in when training adapters)."""
        model = build_dit(unwrap(self.model).cfg, device="cpu")
        ema = full_state_dict(self.model) | self._ema_full()
        if self.cfg.lora.rank > 0:
            from longvideo.train.lora import add_lora, merge_lora

            model = add_lora(model, self.cfg.lora)
            model.load_state_dict(ema)
            return merge_lora(model)
        model.load_state_dict(ema)
        return model

    def export(self, folder: str | Path) -> Path:
        """The EMA model, the VAE (with its latent statistics) and the text encoder as a pipeline folder."""
        from longvideo.pipelines.video import VideoPipeline

        model = self.ema_model()
        if self.env.main:
            Path(folder).parent.mkdir(parents=True, exist_ok=True)
            pipe = VideoPipeline(self.vae, model, self.text_encoder, self.cfg.diffusion, self.cfg.defaults)
            pipe.save_pretrained(folder)
        barrier()
        return Path(folder)
