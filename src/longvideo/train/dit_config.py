"""The DiT trainer's configs: what to train on (`DiTDataConfig`) and how (`DiTTrainConfig`).

    longvideo train CONFIG.yaml [key=value ...]     # task: dit; fields below, dotted keys for nesting

The model's input sizes are the frozen parts' own: `model.in_channels` must equal the VAE's latent
channels, `model.text_dim` the text encoder's width, and `model.cond_channels` is 0 (text-to-video only) or
in_channels + 1 ([known latents | mask]: image-to-video and continuation). The trainer checks them and stops
with a one-line error naming the value to set; it never rewrites the config it was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from longvideo.data.shapes import ShapesConfig
from longvideo.diffusion import DiffusionConfig
from longvideo.errors import UserError
from longvideo.extend.exvideo import ExtendConfig
from longvideo.models.dit import DiTConfig
from longvideo.parallel.apply import MODES
from longvideo.pipelines.video import PipelineDefaults
from longvideo.train import schedule
from longvideo.train.lora import LoRAConfig

PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DiTDataConfig:
    source: str = "shapes"  # "shapes": the shapes world | "manifest": a manifest.jsonl (data/manifest.py)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    seed: int = 1  # shapes: video i is video_rng(seed, i)
    num_videos: int = 6144  # shapes: the training set (held-out pairs left out unless shapes.include_...)
    cache: str = ""  # latent cache folder, built on first use (train/latent_cache.py); "" = encode each batch
    manifest: str = ""  # source "manifest": the manifest.jsonl
    buckets: list[list[int]] = field(default_factory=list)  # manifest: (frames, height, width) buckets
    fps: float = 0.0  # manifest: resample to this frame rate (0 = native)
    image_every: int = 0  # every n-th step trains on images (latent frame 0 of the clips); 0 = never

    def validate(self) -> DiTDataConfig:
        from pathlib import Path

        from longvideo import limits

        if self.source not in ("shapes", "manifest"):
            raise UserError(f"data.source must be 'shapes' or 'manifest', got {self.source!r}")
        if self.source == "manifest" and not self.manifest:
            raise UserError("data.source 'manifest' needs data.manifest (a manifest.jsonl)")
        if self.num_videos < 1 or self.image_every < 0:
            raise UserError("data.num_videos must be >= 1 and data.image_every >= 0")
        if self.cache and Path(self.cache).exists() and not Path(self.cache).is_dir():
            raise UserError(f"data.cache={self.cache} is a file: give a folder for the latent cache")
        limits.check_types(self)
        if not self.fps >= 0:
            raise UserError(f"data.fps must be >= 0 (0 = native), got {self.fps}")
        for b in self.buckets:
            if len(b) != 3 or min(b) < 1:
                raise UserError(f"data.buckets are [frames, height, width] lists of positive sizes, got {b}")
        return self


@dataclass
class DiTTrainConfig:
    task: str = "dit"
    out: str = "runs/dit"
    vae: str = "shapes"  # a VAE folder, pipeline folder or bundled name (frozen)
    # "auto": init's text encoder if init is set (stages must keep it), else "new:shapes" = the shapes T5
    # built here from a fixed seed at model.text_dim; or a text encoder / pipeline folder / bundled name
    text_encoder: str = "auto"
    text_max_length: int = 32
    init: str = ""  # a pipeline folder to start the DiT from (multi-stage training), "" = fresh
    model: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(
            objective="flow", schedule="flow", timestep_sampling="logit_normal"
        )
    )
    defaults: PipelineDefaults = field(default_factory=PipelineDefaults)  # written into the export
    data: DiTDataConfig = field(default_factory=DiTDataConfig)
    latent_stats: bool = True  # a VAE without latents_mean/std gets the cache's per-channel ones
    seed: int = 0
    steps: int = 1000
    stop_at: int = 0  # stop (checkpoint + export) after this step; the lr schedule still spans `steps`
    batch_size: int = 16  # global (all data-parallel ranks, all accumulation steps)
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
    # loss weight 1 + salient_boost on the tokens far from the clip's median latent (train/salient.py:
    # small objects on plain backgrounds); 0 = the plain mean over tokens
    salient_boost: float = 0.0
    salient_ratio: float = 4.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (autocast; fp16 with a grad scaler)
    activation_checkpointing: bool = False
    parallel: str = "ddp"  # "ddp" | "fsdp" | "none" (under torchrun; one process ignores it)
    # sequence parallel: each clip's frames split over sp ranks (torchrun --nproc-per-node dp x sp), `ring`
    # of them in the ring and the rest Ulysses (0: Ulysses when the heads divide by sp, else ring; sp.py)
    sp: int = 1
    ring: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    freeze: list[str] = field(default_factory=list)  # parameter-name globs to freeze
    trainable: list[str] = field(default_factory=list)  # if set, only these globs train
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # rank > 0: train LoRA adapters only
    # ExVideo post-tuning (extend/): frames > 0 extends the init model's window; unless `trainable` is set,
    # only the family's temporal parameters train
    extend: ExtendConfig = field(default_factory=ExtendConfig)
    save_every: int = 500
    keep: int = 3
    max_bad_steps: int = 5  # stop after this many steps in a row with a non-finite loss or gradient
    log_every: int = 20
    tensorboard: bool = False
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    export: str = ""  # write the EMA model as a pipeline folder here at the end

    def validate(self) -> DiTTrainConfig:
        from longvideo import limits

        if self.task != "dit":
            raise UserError(f"task {self.task!r}: this trainer handles task 'dit'")
        limits.check_types(self)  # first: numbers finite (NaN passes the range checks below)
        try:
            limits.check_types(self.defaults)  # written into the export: a NaN fps breaks every generate
        except UserError as e:
            raise UserError(f"defaults.{e}") from None
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("steps, batch_size and grad_accum must be >= 1")
        if self.mixed_precision not in PRECISIONS:
            raise UserError(f"mixed_precision must be one of {', '.join(PRECISIONS)}")
        if self.parallel not in MODES:
            raise UserError(f"parallel must be one of {', '.join(MODES)}, got {self.parallel!r}")
        if self.sp < 1 or self.ring < 0 or (self.ring and self.sp % self.ring):
            raise UserError(
                f"sp must be >= 1 and ring 0 (auto) or a divisor of sp, got sp={self.sp}, ring={self.ring}"
            )
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
        limits.check_optim(self)
        if not 1 <= self.text_max_length <= 4096:
            raise UserError(f"text_max_length must be in 1..4096 tokens, got {self.text_max_length}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda, but torch sees no CUDA device here: use device=cpu (or auto)")
        limits.check_folder("out", self.out)
        limits.check_folder("export", self.export)
        self.data.validate()
        self.lora.validate()
        self.extend.validate()
        if self.extend.frames and not self.init:
            raise UserError("extend needs init: a trained pipeline folder to extend")
        self.model.validate()
        self.diffusion.validate()
        self.defaults.validate()
        limits.check_dit_training(self)  # last: on a valid config
        return self
