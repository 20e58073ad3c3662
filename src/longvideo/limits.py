"""How much a request needs, estimated before anything is allocated, and the few hard caps.

A request that cannot fit the machine is refused up front with a one-line `UserError` that says how much
it would need and how much there is, instead of hanging or dying in a MemoryError half-way (and leaving
files behind). The estimates count the few tensors that dominate, so they are a little low rather than
high: a request they refuse could never run; one they pass may still be tight.

    parameters   from the config: the module built on the meta device (no memory) and counted
    DiT window   B x tokens x dim x (2 ff_mult + 8) values: one block's activations (attention is fused,
                 O(tokens)); B = 2 with classifier-free guidance; tokens = latent frames x h x w / patch
    VAE chunk    the widest level's activations, 12 tensors of channels x frames x height x width
                 (one chunk when the VAE streams, the whole clip when it cannot)
    generation   the larger of the two (they do not overlap) + the chunk's pixels, float and uint8
    training     20 bytes per parameter (fp32 weights, gradients, Adam's two moments, EMA), 4 when only
                 some train (LoRA, freeze, extend), per data-parallel rank (FSDP: a 1/world share); the
                 activations autograd keeps, (ff_mult + 4) x dim values per token per layer (1 with
                 activation checkpointing) for one micro-batch of the largest clip, in the VAE's latent
                 sizes (its config.json); a latent cache is held whole, float16
    VAE training the parameter state, and 2 x (2 num_res_blocks + 2) tensors of the widest level

Memory is what the device has free now: on CUDA `torch.cuda.mem_get_info` (plus what torch's cache holds
unused), else MemAvailable of /proc/meminfo (or psutil), lowered to what a cgroup's limit or `ulimit -v`
leaves. Long videos are generated window after window at constant memory, so a video's length is a matter
of time, not memory: the counts that only cost time have the documented caps below instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longvideo.errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's parser imports this module
    import torch

    from longvideo.models.dit import DiTConfig
    from longvideo.models.vae.model import VAEConfig

# ----------------------------------------------------------------------------- hard caps (time, not memory)

MAX_STEPS = 10_000  # sampler steps: samplers converge in tens; 10k is already hours per window
MAX_FRAMES = 1_000_000  # frames of one video one command makes (about 35 hours at 8 fps)
MAX_VIDEOS = 1_000_000  # videos one command renders or evaluates (data shapes -n, eval recon --num)
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits
MAX_TIMESTEPS = 100_000  # a diffusion config's num_train_timesteps (the seeds use 1000)
# Structure counts that would make even building the module on the meta device slow (seconds per 200
# layers): far above every published model (video DiTs have 28-60 layers, VAEs 2-3 blocks per level).
MAX_LAYERS = 256  # DiT num_layers
MAX_SUBLAYERS = 32  # DiT motion_layers, VAE num_res_blocks
MAX_LEVELS = 8  # VAE channel_mult entries (each one a resolution level)

BYTES_PER_TRAINED_PARAM = 20  # fp32 weight + gradient + Adam exp_avg + exp_avg_sq + EMA copy
VAE_TENSORS = 12  # live activations of the widest VAE level, measured on the shapes VAE (256x256: ~14)


# ----------------------------------------------------------------------------- what there is


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup memory limit, None without one."""
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            cap, used = Path(limit).read_text().strip(), Path(usage).read_text().strip()
        except OSError:
            continue
        if cap.isdigit() and used.isdigit() and int(cap) < 2**60:  # v1 says "no limit" with ~2^63
            return max(0, int(cap) - int(used))
    return None


def available_memory(device: torch.device | str | None = None) -> int | None:
    """Bytes that a new allocation on `device` can get now; None when unknown (nothing is refused)."""
    import torch

    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    free = None
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    for cap in (_cgroup_free(), _rlimit_free()):
        if cap is not None:
            free = cap if free is None else min(free, cap)
    return free


def _rlimit_free() -> int | None:
    """Address space left under `ulimit -v` (RLIMIT_AS), None without one."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, soft - int(line.split()[1]) * 1024)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return None


def human(n: float) -> str:
    """Bytes as '1.5 GiB' (up to EiB, then powers of ten: the absurd requests are the point)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            break
        n /= 1024
    return f"{n:.1f} {unit}" if n < 1e4 else f"{n:.1e} {unit}"


def check_fits(need: float, what: str, device: torch.device | str | None = None, mend: str = "") -> None:
    """UserError when `need` bytes are more than `device` has free. `what` says what needs them ("a 64x64
    window of 33 frames"), `mend` how to need less."""
    have = available_memory(device)
    if have is None or need <= have:
        return
    where = "the GPU" if str(device).startswith("cuda") else "this machine"
    mend = f": {mend}" if mend else ""
    raise UserError(f"{what} needs about {human(need)} of memory; {where} has {human(have)} free{mend}")


def check_count(name: str, value: Any, low: int, high: int, why: str = "") -> int:
    """An integer in [low, high], else a UserError naming the range (and why the cap)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise UserError(f"{name} must be in {low}..{high:,}{f' ({why})' if why else ''}, got {value:,}")
    return value


def check_finite(name: str, value: Any) -> float:
    """A real number that is neither inf nor NaN, else a UserError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, got {value}")
    return float(value)


# ----------------------------------------------------------------------------- config field types

_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _is(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, _SCALARS[kind])


def check_types(cfg: Any) -> None:
    """Every field of the dataclass `cfg` holds what its annotation says (int, float, bool, str, a list of
    one of them, or None where `| None`); floats finite. A config read from JSON is not type-checked on
    the way in (YAML is, by OmegaConf), and a 6.5-layer model fails deep in its constructor otherwise."""
    import dataclasses

    for f in dataclasses.fields(cfg):
        kind, value = str(f.type).replace(" ", ""), getattr(cfg, f.name)
        if kind.endswith("|None"):
            if value is None:
                continue
            kind = kind.removesuffix("|None")
        if kind in _SCALARS:
            ok = _is(value, kind)
        elif kind.startswith("list[") and kind[5:-1] in _SCALARS:
            ok = isinstance(value, list) and all(_is(v, kind[5:-1]) for v in value)
        else:
            continue
        if not ok:
            what = "a finite number" if kind == "float" else kind.replace("list[", "a list of ").rstrip("]")
            raise UserError(f"{f.name} must be {what}, got {value!r}")


# ----------------------------------------------------------------------------- what a model needs


def dit_params(cfg: DiTConfig) -> int:
    """Parameters of the VideoDiT of `cfg` (built on the meta device: no memory, ~0.2 s for 3B)."""
    import torch

    from longvideo.models.dit import VideoDiT

    with torch.device("meta"):
        return sum(p.numel() for p in VideoDiT(cfg).parameters())


def vae_params(cfg: VAEConfig) -> int:
    """Parameters of the CausalVAE of `cfg` (built on the meta device)."""
    import torch

    from longvideo.models.vae.model import CausalVAE

    with torch.device("meta"):
        return sum(p.numel() for p in CausalVAE(cfg).parameters())


def dit_tokens(cfg: DiTConfig, latent_frames: int, h: int, w: int) -> int:
    """Tokens of a latent clip (K, h, w) after patchify."""
    pt, ph, pw = cfg.patch_size
    return -(-latent_frames // pt) * -(-h // ph) * -(-w // pw)


def dit_window_bytes(cfg: DiTConfig, latent_frames: int, h: int, w: int, batch: int, itemsize: int) -> int:
    """Inference activations of one DiT call on latents (batch, C, K, h, w): one block at a time."""
    n = dit_tokens(cfg, latent_frames, h, w)
    latents = batch * (2 * cfg.in_channels + cfg.cond_channels) * latent_frames * h * w * 4 * 4  # sampler
    return batch * n * cfg.dim * (2 * cfg.ff_mult + 8) * itemsize + latents


def vae_bytes(cfg: VAEConfig, frames: int, height: int, width: int, itemsize: int, batch: int = 1) -> int:
    """Activations of the VAE on a clip (batch, 3, frames, height, width): its widest level's tensors."""
    widest, scale, time = 0, 1, frames
    for mult, down in zip(cfg.channel_mult, cfg.down, strict=True):
        widest = max(widest, cfg.base_channels * mult * time * -(-height // scale) * -(-width // scale))
        if down:
            scale *= 2
        if down == "spacetime":
            time = -(-time // 2)
    attention = 0
    if cfg.mid_attention:  # at least one attention matrix of the mid block over a latent frame's tokens
        tokens = -(-height // cfg.spatial_factor) * -(-width // cfg.spatial_factor)
        attention = tokens * tokens * max(itemsize, 4)
    return batch * (widest * VAE_TENSORS * itemsize + attention)


def generation_bytes(
    dit: DiTConfig, vae: VAEConfig, window_latents: int, height: int, width: int, guidance: float,
    dit_itemsize: int, vae_itemsize: int, decode_frames: int,
) -> int:  # fmt: skip
    """One window of a generation: the DiT's activations, or the VAE decoding `decode_frames` frames
    (one chunk when it streams, the whole video when not), whichever is more, plus the window's pixels."""
    s = vae.spatial_factor
    h, w = -(-height // s), -(-width // s)
    batch = 2 if guidance > 1 else 1
    dit_b = dit_window_bytes(dit, window_latents, h, w, batch, dit_itemsize)
    vae_b = vae_bytes(vae, decode_frames, height, width, vae_itemsize)
    pixels = 3 * decode_frames * height * width * (4 + 1)  # float frames and their uint8 copy
    return max(dit_b, vae_b) + pixels


def dit_activation_bytes(
    cfg: DiTConfig, micro_batch: int, latent_frames: int, h: int, w: int, checkpointing: bool, itemsize: int
) -> int:
    """What autograd keeps for one training micro-batch of latents (micro_batch, C, K, h, w)."""
    n = micro_batch * dit_tokens(cfg, latent_frames, h, w)
    per_layer = 1 if checkpointing else cfg.ff_mult + 4
    return n * cfg.dim * (per_layer * cfg.num_layers + 2 * cfg.ff_mult + 8) * itemsize


def vae_training_bytes(cfg: VAEConfig, params: int, batch: int, frames: int, height: int, width: int) -> int:
    """Training a VAE: parameter state and the encoder's + decoder's activations autograd keeps."""
    per_level = 2 * cfg.num_res_blocks + 2  # each ResBlock keeps ~2 tensors per level, plus the samplers
    acts = 2 * vae_bytes(cfg, frames, height, width, 4, batch) * per_level // VAE_TENSORS
    return params * BYTES_PER_TRAINED_PARAM + acts


# ----------------------------------------------------------------------------- training configs


def check_optim(cfg: Any) -> None:
    """The optimiser and loop settings both trainers share: finite, in range (a NaN lr trains NaN)."""
    if not check_finite("lr", cfg.lr) > 0:
        raise UserError(f"lr must be > 0, got {cfg.lr}")
    if not 0 <= check_finite("min_lr_ratio", cfg.min_lr_ratio) <= 1:
        raise UserError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    betas = cfg.betas
    if len(betas) != 2 or not all(0 <= check_finite("betas", b) < 1 for b in betas):
        raise UserError(f"betas must be two numbers in [0, 1), e.g. [0.9, 0.99]; got {list(betas)}")
    if not 0 <= check_finite("ema_decay", cfg.ema_decay) <= 1:
        raise UserError(f"ema_decay must be in [0, 1], got {cfg.ema_decay}")
    check_finite("grad_clip", cfg.grad_clip)  # <= 0: measured, not clipped
    if check_finite("weight_decay", getattr(cfg, "weight_decay", 0.0)) < 0:
        raise UserError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    for name in ("warmup", "stop_at", "threads"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("keep", "save_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise UserError(f"seed must be in 0..2**64-1, got {cfg.seed}")


def check_folder(name: str, path: str | None) -> None:
    """A folder a run writes into (`out=`, `export=`) must not be an existing file (such as the config)."""
    if path and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{name}={path} is a file, not a folder: give a folder for the run to write into")


# ----------------------------------------------------------------------------- what a training run needs


def _vae_factors(name_or_path: str) -> tuple[int, int, int] | None:
    """(temporal, spatial factor, latent channels) of a VAE folder / pipeline / bundled name, read from its
    config.json alone; None when it cannot be read (the trainer reports that in its own words)."""
    import json

    from longvideo.models.vae.model import VAEConfig
    from longvideo.models.weights import regular_file
    from longvideo.pipelines.folder import resolve_component

    try:
        folder = resolve_component(name_or_path, "vae")
        data = json.loads(regular_file(folder / "config.json", folder).read_text())  # confined to the folder
        cfg = VAEConfig(**data).validate()
    except (UserError, OSError, ValueError, TypeError):
        return None
    return cfg.temporal_factor, cfg.spatial_factor, cfg.latent_channels


def _train_device(device: str) -> str:
    import torch

    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def _world() -> int:
    w = os.environ.get("WORLD_SIZE", "1")
    return max(1, int(w)) if w.isdigit() else 1


def check_dit_training(cfg: Any) -> None:
    """Refuse a DiTTrainConfig whose model, batch and latent cache cannot fit one process's device."""
    params = dit_params(cfg.model)
    world = _world()
    full = not (cfg.lora.rank or cfg.trainable or cfg.freeze or cfg.extend.frames)
    state = params * (BYTES_PER_TRAINED_PARAM if full else 4) // (world if cfg.parallel == "fsdp" else 1)
    need, what = state, f"training a DiT of {params / 1e6:,.1f}M parameters"
    factors = _vae_factors(cfg.vae)
    d = cfg.data
    sizes = [(d.shapes.num_frames, d.shapes.height, d.shapes.width)] if d.source == "shapes" else d.buckets
    if factors is not None and sizes:
        f, s, c = factors
        latent = [((t - 1) // f + 1, -(-h // s), -(-w // s)) for t, h, w in sizes]
        if cfg.extend.frames:
            latent = [(max(k, cfg.extend.frames), h, w) for k, h, w in latent]
        k, h, w = max(latent, key=lambda x: dit_tokens(cfg.model, *x))
        micro = max(1, cfg.batch_size // (cfg.grad_accum * world))
        itemsize = 4 if cfg.mixed_precision == "no" else 2
        need += dit_activation_bytes(cfg.model, micro, k, h, w, cfg.activation_checkpointing, itemsize)
        what += f" on batches of {micro} x {k} latent frames of {h}x{w}"
        if d.source == "shapes" and d.cache:  # the latent cache is held in memory (float16)
            need += d.num_videos * c * ((d.shapes.num_frames - 1) // f + 1) * h * w * 2
            what += f" with a latent cache of {d.num_videos:,} videos"
    check_fits(need, what, _train_device(cfg.device),
               "use a smaller model, batch or clip size (or lora / activation_checkpointing)")  # fmt: skip


def check_vae_training(cfg: Any) -> None:
    """Refuse a VAETrainConfig whose model and batches cannot fit this machine (the VAE trains on CPU)."""
    if cfg.init:  # the init folder's config is used, and its weights bound its size
        return
    params = vae_params(cfg.model)
    d = cfg.data
    video = vae_training_bytes(cfg.model, params, cfg.batch_size, cfg.video_frames, d.height, d.width)
    image = vae_training_bytes(cfg.model, params, cfg.image_batch_size, 1, d.height, d.width)
    what = (
        f"training a VAE of {params / 1e6:,.1f}M parameters on batches of {cfg.batch_size} x "
        f"{cfg.video_frames} frames of {d.height}x{d.width}"
    )
    check_fits(max(video, image), what, "cpu", "use a smaller model, batch or clip size")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


__all__ = [
    "MAX_FRAMES",
    "MAX_LAYERS",
    "MAX_LEVELS",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_SUBLAYERS",
    "MAX_TIMESTEPS",
    "MAX_VIDEOS",
    "available_memory",
    "check_count",
    "check_dit_training",
    "check_finite",
    "check_fits",
    "check_folder",
    "check_optim",
    "check_types",
    "check_vae_training",
    "dit_activation_bytes",
    "dit_params",
    "generation_bytes",
    "human",
    "vae_bytes",
    "vae_params",
    "vae_training_bytes",
]
