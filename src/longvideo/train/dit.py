"""Video DiT training: one process on a CPU up to many GPUs under torchrun, through one loop.

    longvideo train configs/shapes_dit.yaml [key=value ...]
    torchrun --nproc-per-node 8 -m longvideo train configs/x.yaml parallel=fsdp mixed_precision=bf16

What a step does: take global batch `step` from the sampler (a function of (seed, step) only), give rank r
its slice, and for every sample j of the global batch draw t, the noise, the conditioning task and the
caption drop from a generator seeded by (seed, step, j). The loss of a step is therefore the same whatever
the world size and however the batch is split into micro-batches, and a resumed run replays exactly the
batches and noise the uninterrupted run would have drawn (tests/test_train_dit.py checks both).

Conditioning tasks (one code path with the pipeline, pipelines/inputs.build_cond): text-to-video (nothing
known), image-to-video (latent frame 0 known) and continuation (the first 1..K/2 latent frames known); the
DiT sees [known latents | mask] through its cond channels and learns the whole clip (known frames too).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from longvideo.data.shapes import ShapesConfig
from longvideo.diffusion import (
    DiffusionConfig,
    NoiseSchedule,
    add_noise,
    salient_weights,
    sample_training_times,
    target,
    weighted_mean,
)
from longvideo.errors import UserError
from longvideo.extend.exvideo import ExtendConfig, extend_dit, trainable_globs
from longvideo.models.dit import DiTConfig, build_dit
from longvideo.parallel import (
    DistEnv,
    all_reduce_sum,
    barrier,
    checkpoint_blocks,
    data_parallel,
    full_state_dict,
    init_distributed,
    load_full_state_dict,
)
from longvideo.parallel.apply import MODES, unwrap
from longvideo.pipelines.video import PipelineDefaults
from longvideo.train import schedule
from longvideo.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from longvideo.train.dit_data import LatentBatches, make_batches
from longvideo.train.ema import EMA
from longvideo.train.lora import LoRAConfig
from longvideo.train.warm_start import load_init

PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DiTDataConfig:
    source: str = "shapes"  # "shapes": the shapes world | "manifest": a manifest.jsonl (data/manifest.py)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    seed: int = 1  # shapes: video i is video_rng(seed, i)
    num_videos: int = 6144  # shapes: the training set (held-out pairs left out unless shapes.include_...)
    cache: str = ""  # latent cache folder, built on first use (data/latent_cache.py); "" = encode each batch
    manifest: str = ""  # source "manifest": the manifest.jsonl
    buckets: list[list[int]] = field(default_factory=list)  # manifest: (frames, height, width) buckets
    fps: float = 0.0  # manifest: resample to this frame rate (0 = native)
    image_every: int = 0  # every n-th step trains on images (latent frame 0 of the clips); 0 = never


@dataclass
class DiTTrainConfig:
    task: str = "dit"
    out: str = "runs/dit"
    vae: str = "shapes"  # a VAE folder or bundled name (frozen)
    # "auto": init's text encoder if init is set (stages must keep it), else "new:shapes" = the shapes T5
    # built here from a fixed seed; or a text encoder / pipeline folder
    text_encoder: str = "auto"
    text_max_length: int = 32
    text_dim: int = 64  # new:shapes: the T5's width
    init: str = ""  # a pipeline folder to start the DiT from (multi-stage training), "" = fresh
    model: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(
            objective="flow", schedule="flow", timestep_sampling="logit_normal"
        )
    )
    defaults: PipelineDefaults = field(default_factory=PipelineDefaults)  # written into the export
    data: DiTDataConfig = field(default_factory=DiTDataConfig)
    latent_stats: bool = True  # set the VAE's per-channel latents_mean/std from the cache before training
    seed: int = 0
    steps: int = 1000
    stop_at: int = 0  # stop (checkpoint + export) after this step; the lr schedule still spans `steps`
    batch_size: int = 16  # global (all ranks, all accumulation steps)
    grad_accum: int = 1
    lr: float = 3e-4
    lr_schedule: str = "cosine"  # train/schedule.py
    min_lr_ratio: float = 0.1
    warmup: int = 200
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    text_drop: float = 0.1  # captions replaced by "" (classifier-free guidance)
    p_image_cond: float = 0.25  # conditioning task probabilities; the rest is text-to-video
    p_continue: float = 0.25
    # noise augmentation of the known frames (the pipeline's cond_noise): each conditioned sample's known
    # latents are moved to a diffusion time drawn uniformly from [0, cond_noise]; 0 = clean
    cond_noise: float = 0.0
    # loss weight 1 + salient_boost on the tokens far from the clip's median latent (diffusion/objectives.py
    # salient_weights: small objects on plain backgrounds); 0 = the plain mean over tokens
    salient_boost: float = 0.0
    salient_ratio: float = 4.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (autocast; fp16 with a grad scaler)
    activation_checkpointing: bool = False
    parallel: str = "ddp"  # "ddp" | "fsdp" | "none" (under torchrun; one process ignores it)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    freeze: list[str] = field(default_factory=list)  # parameter-name globs to freeze
    trainable: list[str] = field(default_factory=list)  # if set, only these globs train
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # rank > 0: train LoRA adapters only
    # ExVideo post-tuning (extend/): frames > 0 extends the init model's window; unless `trainable` is set,
    # only the family's temporal parameters train
    extend: ExtendConfig = field(default_factory=ExtendConfig)
    save_every: int = 500
    keep: int = 3
    log_every: int = 20
    tensorboard: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    export: str = ""  # write the EMA model as a pipeline folder here at the end

    def validate(self) -> DiTTrainConfig:
        if self.task != "dit":
            raise UserError(f"task {self.task!r}: this trainer handles task 'dit'")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("steps, batch_size and grad_accum must be >= 1")
        if self.mixed_precision not in PRECISIONS:
            raise UserError(f"mixed_precision must be one of {', '.join(PRECISIONS)}")
        if self.parallel not in MODES:
            raise UserError(f"parallel must be one of {', '.join(MODES)}, got {self.parallel!r}")
        if self.lr_schedule not in schedule.SCHEDULES:
            raise UserError(f"lr_schedule must be one of {', '.join(schedule.SCHEDULES)}")
        if not (0 <= self.text_drop <= 1 and self.p_image_cond >= 0 and self.p_continue >= 0):
            raise UserError("text_drop, p_image_cond and p_continue must be probabilities")
        if self.p_image_cond + self.p_continue > 1:
            raise UserError("p_image_cond + p_continue must be <= 1")
        if not 0 <= self.cond_noise < 1:
            raise UserError(f"cond_noise must be a diffusion time in [0, 1), got {self.cond_noise}")
        if self.salient_boost < 0 or self.salient_ratio <= 0:
            raise UserError("salient_boost must be >= 0 and salient_ratio > 0")
        if self.data.source not in ("shapes", "manifest"):
            raise UserError(f"data.source must be 'shapes' or 'manifest', got {self.data.source!r}")
        self.lora.validate()
        self.extend.validate()
        if self.extend.frames and not self.init:
            raise UserError("extend needs init: a trained pipeline folder to extend")
        self.model.validate()
        self.diffusion.validate()
        self.defaults.validate()
        return self


def sample_randomness(cfg: DiTTrainConfig, step: int, j: int, latent_shape: tuple[int, ...], sched):
    """What sample j of global batch `step` draws: (t, eps, number of known latent frames, drop caption,
    the known frames' noise (time, eps) or None)."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, step, j]).generate_state(1)[0]))
    t = sample_training_times(1, cfg.diffusion, sched, generator=g)[0]
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
    known_noise = None
    if known and cfg.cond_noise > 0:  # drawn last: runs without it keep their exact random stream
        tc = torch.rand(1, generator=g).item() * cfg.cond_noise
        known_noise = (tc, torch.randn((latent_shape[0], known, *latent_shape[2:]), generator=g))
    return t, eps, known, drop, known_noise


class DiTTrainer:
    def __init__(self, cfg: DiTTrainConfig, env: DistEnv | None = None):
        self.cfg = cfg.validate()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.env = env if env is not None else init_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.sched = NoiseSchedule(cfg.diffusion)
        self.batches: LatentBatches = make_batches(cfg, self.env)
        self.vae, self.text_encoder = self.batches.vae, self.batches.text_encoder
        mcfg = cfg.model
        mcfg.in_channels = self.vae.cfg.latent_channels
        mcfg.text_dim = self.text_encoder.dim
        if mcfg.cond_channels not in (0, mcfg.in_channels + 1):
            mcfg.cond_channels = mcfg.in_channels + 1
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = build_dit(mcfg, device="cpu")
        if cfg.init:
            from longvideo.pipelines import folder as fs

            note = load_init(model, fs.load_transformer(fs.resolve_pipeline(cfg.init) / "transformer"))
            if note and self.env.main:
                print(note, flush=True)
        if cfg.extend.frames:
            model = extend_dit(model, cfg.extend)
            if not cfg.trainable:
                cfg.trainable = trainable_globs(model.cfg, cfg.extend)
        if cfg.lora.rank > 0:
            from longvideo.train.lora import add_lora

            model = add_lora(model, cfg.lora)
        self._freeze(model)
        if cfg.activation_checkpointing:
            checkpoint_blocks(model)
        model.to(self.env.device)
        self.model = data_parallel(model, self.env, cfg.parallel)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise UserError("nothing to train: every parameter is frozen (see freeze / trainable)")
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.ema = self._new_ema()
        self.amp = PRECISIONS[cfg.mixed_precision]
        self.scaler = torch.amp.GradScaler(enabled=self.amp is torch.float16)
        self.step = 0

    def _new_ema(self) -> EMA:
        """EMA over the trainable parameters only (frozen ones equal the model's at all times)."""
        trainable = [n for n, p in unwrap(self.model).named_parameters() if p.requires_grad]
        return EMA(unwrap(self.model), self.cfg.ema_decay, keys=trainable)

    def _freeze(self, model: torch.nn.Module) -> None:
        cfg = self.cfg
        if cfg.lora.rank > 0:
            return  # add_lora froze everything but the adapters
        for name, p in model.named_parameters():
            frozen = any(fnmatch.fnmatch(name, pat) for pat in cfg.freeze)
            if cfg.trainable:
                frozen = frozen or not any(fnmatch.fnmatch(name, pat) for pat in cfg.trainable)
            p.requires_grad_(not frozen)

    # -- one step -----------------------------------------------------------------------------------------

    def _micro_batches(self, step: int) -> list[list[int]]:
        """This rank's sample positions j of global batch `step`, split into grad_accum micro-batches."""
        cfg, env = self.cfg, self.env
        per_rank = cfg.batch_size // env.world_size
        mine = list(range(env.rank * per_rank, (env.rank + 1) * per_rank))
        m = per_rank // cfg.grad_accum
        return [mine[i * m : (i + 1) * m] for i in range(cfg.grad_accum)]

    def _sample_loss(self, step: int, js: list[int], latents: torch.Tensor, text, mask) -> torch.Tensor:
        """Per-sample losses (len(js),) of one micro-batch; latents (b, C, K, h, w) scaled."""
        cfg, dev = self.cfg, self.env.device
        b, c = latents.shape[:2]
        ts, eps, cond = [], [], torch.zeros(b, c + 1, *latents.shape[2:])
        for i, j in enumerate(js):
            t, e, known, drop, kn = sample_randomness(cfg, step, j, tuple(latents.shape[1:]), self.sched)
            ts.append(t)
            eps.append(e)
            if known:
                z = latents[i, :, :known]
                cond[i, :c, :known] = z if kn is None else add_noise(z, kn[1], kn[0], self.sched)
                cond[i, c, :known] = 1.0
            if drop:
                text[i], mask[i] = self.batches.empty_text
        t = torch.stack(ts)
        x0, eps = latents.to(dev), torch.stack(eps).to(dev)
        x_t = add_noise(x0, eps, t, self.sched)
        use_cond = unwrap(self.model).cfg.cond_channels > 0
        ctx = torch.autocast(dev.type, self.amp) if self.amp is not None else contextlib.nullcontext()
        with ctx:
            pred = self.model(
                x_t, self.sched.model_time(t).to(dev, torch.float32), text.to(dev), mask.to(dev),
                cond.to(dev) if use_cond else None,
            )  # fmt: skip
        err = (pred[:, :c].float() - target(x0, eps, t, self.sched, cfg.diffusion.objective)) ** 2
        if not cfg.salient_boost:
            return err.mean(dim=(1, 2, 3, 4))
        return weighted_mean(err, salient_weights(x0, cfg.salient_boost, cfg.salient_ratio))

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        lr = schedule.lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio, cfg.lr_schedule)
        for g in self.opt.param_groups:
            g["lr"] = lr
        indices = self.batches.global_batch(step)
        micro = self._micro_batches(step)
        total = torch.zeros(1, dtype=torch.float64)
        for i, js in enumerate(micro):
            latents, text, mask = self.batches.load(step, [indices[j] for j in js])
            sync = i == len(micro) - 1
            with self._no_sync(sync):
                losses = self._sample_loss(step, js, latents, text, mask)
                # each rank's mean over its samples; DDP / FSDP average over ranks -> the global mean
                loss = losses.sum() / (len(js) * len(micro))
                self.scaler.scale(loss).backward()
            total += losses.detach().double().sum().cpu()
        self.scaler.unscale_(self.opt)
        logs = {"lr": lr}
        if cfg.grad_clip > 0:
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            logs["grad_norm"] = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(unwrap(self.model))
        logs["loss"] = float(all_reduce_sum(total)) / cfg.batch_size
        return logs

    def _no_sync(self, sync: bool):
        m = self.model
        if sync or not self.env.distributed:
            return contextlib.nullcontext()
        if isinstance(m, torch.nn.parallel.DistributedDataParallel):
            return m.no_sync()
        if hasattr(m, "set_requires_gradient_sync"):  # FSDP2

            @contextlib.contextmanager
            def fsdp_no_sync():
                m.set_requires_gradient_sync(False)
                try:
                    yield
                finally:
                    m.set_requires_gradient_sync(True)

            return fsdp_no_sync()
        return contextlib.nullcontext()

    # -- checkpoints --------------------------------------------------------------------------------------

    def _ema_full(self) -> dict[str, torch.Tensor]:
        return {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in self.ema.shadow.items()
        }

    def save(self) -> Path | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, ema_sd = full_state_dict(self.model), self._ema_full()
        optim = get_optimizer_state_dict(unwrap(self.model), self.opt, options=opts)
        path = None
        if self.env.main:
            rng = {"torch": torch.get_rng_state()}
            objects = {"optim": optim, "scaler": self.scaler.state_dict(), "rng": rng}
            meta = {"ema_updates": self.ema.updates, "config": _jsonable(asdict(self.cfg)),
                    "world_size": self.env.world_size}  # fmt: skip
            path = save_checkpoint(self.out / "ckpt", self.step, {"model": model_sd, "ema": ema_sd}, objects,
                                   meta, keep=self.cfg.keep)  # fmt: skip
        barrier()
        return path

    def try_resume(self) -> bool:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        path = latest_checkpoint(self.out / "ckpt")
        if path is None:
            return False
        tensors, objects, meta = load_checkpoint(path)
        load_full_state_dict(self.model, tensors["model"])
        ema = self._new_ema()  # same sharding as the model
        with torch.no_grad():
            for k, v in ema.shadow.items():
                src = tensors["ema"][k].float()
                if hasattr(v, "device_mesh"):
                    from torch.distributed.tensor import distribute_tensor

                    v.copy_(distribute_tensor(src, v.device_mesh, v.placements))
                else:
                    v.copy_(src)
        ema.updates = meta["ema_updates"]
        self.ema = ema
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        set_optimizer_state_dict(unwrap(self.model), self.opt, objects["optim"], options=opts)
        self.scaler.load_state_dict(objects["scaler"])
        torch.set_rng_state(objects["rng"]["torch"])
        self.step = meta["step"]
        return True

    # -- the loop -----------------------------------------------------------------------------------------

    def fit(self, progress: bool = True) -> dict:
        cfg, env = self.cfg, self.env
        resumed = self.try_resume()
        end = min(cfg.steps, cfg.stop_at) if cfg.stop_at > 0 else cfg.steps
        log = tb = None
        if env.main:
            self.out.mkdir(parents=True, exist_ok=True)
            log = (self.out / "metrics.jsonl").open("a")
            if cfg.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as e:
                    raise UserError(
                        "tensorboard=true needs the tensorboard package (pip install tensorboard)"
                    ) from e
                tb = SummaryWriter(str(self.out / "tb"))
        bar = tqdm(
            total=end, initial=self.step, desc="train dit", unit="step", disable=not (progress and env.main)
        )
        last: dict = {}
        losses: list[float] = []  # since the last log line: its loss_mean (one step's loss is noisy)
        try:
            while self.step < end:
                t0 = time.perf_counter()
                logs = self.train_step(self.step)
                self.step += 1
                last = logs | {"step": self.step, "sec": round(time.perf_counter() - t0, 4)}
                if log is not None:  # the main rank logs (and keeps the loss_mean list)
                    losses.append(logs["loss"])
                    if self.step % cfg.log_every == 0 or self.step == end:
                        log.write(json.dumps(last | {"loss_mean": sum(losses) / len(losses)}) + "\n")
                        losses.clear()
                        log.flush()
                        if tb is not None:
                            for k, v in logs.items():
                                tb.add_scalar(f"train/{k}", v, self.step)
                if self.step % cfg.save_every == 0 or self.step == end:
                    self.save()
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
                bar.update()
        finally:
            bar.close()
            if log is not None:
                log.close()
            if tb is not None:
                tb.close()
        if cfg.export:
            self.export(cfg.export)
        return {"steps": self.step, "resumed": resumed, "last": last, "out": str(self.out)}

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

    def export(self, folder: str | Path) -> Path | None:
        """The EMA model, the VAE (with its latent statistics) and the text encoder as a pipeline folder."""
        from longvideo.pipelines.video import VideoPipeline

        model = self.ema_model()
        if self.env.main:
            Path(folder).parent.mkdir(parents=True, exist_ok=True)
            pipe = VideoPipeline(self.vae, model, self.text_encoder, self.cfg.diffusion, self.cfg.defaults)
            pipe.save_pretrained(folder)
        barrier()
        return Path(folder)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
