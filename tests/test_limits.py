"""limits.py: what a request needs is estimated before anything is allocated, and what cannot fit the
machine is a one-line UserError saying how much it needs and how much there is; the caps that only cost
time (steps, frames, seeds) and the structure caps of model configs."""

import math
import time

import pytest
import torch

from longvideo import limits
from longvideo.config import load_config
from longvideo.diffusion import DiffusionConfig
from longvideo.errors import UserError
from longvideo.models.dit import DiTConfig, VideoDiT, dit_preset
from longvideo.models.vae.model import CausalVAE, VAEConfig, vae_preset
from longvideo.pipelines import GenerationRequest
from longvideo.pipelines.tiny import tiny_pipeline

GiB = 2**30


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def few_gib(monkeypatch, gib: float = 1.0) -> None:
    """Pretend the machine has `gib` GiB free."""
    monkeypatch.setattr(limits, "available_memory", lambda device=None: int(gib * GiB))


def test_available_memory_is_known_on_linux():
    free = limits.available_memory()
    assert free is None or free > 0
    assert limits.available_memory("meta") is None  # nothing is refused where nothing is known


def test_human_sizes():
    assert limits.human(512) == "512.0 B"
    assert limits.human(1.5 * GiB) == "1.5 GiB"
    assert "EiB" in limits.human(2**80)


def test_check_fits_says_what_is_needed_and_what_there_is(monkeypatch):
    few_gib(monkeypatch, 1)
    limits.check_fits(GiB // 2, "half")
    with pytest.raises(
        UserError, match=r"^x needs about 2\.0 GiB of memory; this machine has 1\.0 GiB free: y$"
    ):
        limits.check_fits(2 * GiB, "x", mend="y")


def test_estimates_grow_with_the_request():
    vae, dit = vae_preset("tiny"), dit_preset("tiny-full3d")
    one = limits.vae_bytes(vae, 17, 64, 64, 4)
    # 4x the pixels: 4x the activations, and the mid attention's matrix grows 16x (tokens squared)
    assert limits.vae_bytes(vae, 17, 128, 128, 4) > 4 * one and limits.vae_bytes(vae, 34, 64, 64, 4) > one
    w = limits.dit_window_bytes(dit, 9, 8, 8, 1, 4)
    assert 1.9 * w < limits.dit_window_bytes(dit, 9, 8, 8, 2, 4) <= 2 * w
    assert limits.dit_tokens(dit, 9, 8, 8) == 9 * 4 * 4  # patch (1, 2, 2)
    assert limits.dit_params(dit) == sum(p.numel() for p in VideoDiT(dit).parameters())
    assert limits.vae_params(vae) == sum(p.numel() for p in CausalVAE(vae).parameters())


# ----------------------------------------------------------------------------- generation requests


@pytest.mark.parametrize(
    "options, message",
    [
        ({"frames": 10**12}, r"frames must be in 1\.\.1,000,000"),
        ({"steps": 10**9}, r"steps must be in 1\.\.10,000"),
        (
            {"height": 100_000, "width": 100_000},
            r"100000x100000 window of 9 frames needs about .* [TP]iB of memory",
        ),
        ({"window": 10**6, "frames": 10**6, "height": 256, "width": 256}, r"window of 1000001 frames needs"),
        ({"seed": 10**30}, r"seed must be an integer in 0\.\.2\*\*64-1"),
        ({"seed": -1}, r"seed must be an integer in 0\.\.2\*\*64-1"),
        ({"guidance": math.inf}, "guidance must be a finite number"),
        ({"guidance": math.nan}, "guidance must be a finite number"),
        ({"guidance": "strong"}, "guidance must be a number"),
    ],
)
def test_requests_that_cannot_run_are_refused_before_anything_is_allocated(pipe, options, message):
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=message):
        GenerationRequest("a red circle", **options).resolve(pipe)
    assert time.perf_counter() - t0 < 5


def test_a_request_that_fits_runs_and_one_that_does_not_is_refused(pipe, monkeypatch):
    GenerationRequest("a red circle", frames=10**6, height=64, width=64).resolve(pipe)  # long: only time
    few_gib(monkeypatch, 0.01)  # 10 MiB
    with pytest.raises(UserError, match=r"a 256x256 window of 9 frames needs about .* MiB of memory; this "
                                         r"machine has 10\.2 MiB free: ask for a smaller"):  # fmt: skip
        GenerationRequest("a red circle", height=256, width=256).resolve(pipe)


# ----------------------------------------------------------------------------- model and scheduler configs


@pytest.mark.parametrize(
    "cfg, message",
    [
        (DiTConfig(num_layers=10**6), "num_layers 1000000 is more than 256"),
        (DiTConfig(motion_layers=10**6, family="motion"), "motion_layers is more than 32"),
        (DiTConfig(num_layers=6.5), "num_layers must be int"),
        (DiTConfig(norm_eps=math.nan), "norm_eps must be a finite number"),
        (DiTConfig(family="motion", motion_heads=0), "motion_heads and motion_norm_groups must be > 0"),
        (DiTConfig(pos_embed_max=10**6, abs_pos_embed="sd3"), "pos_embed_max is a table side"),
        (VAEConfig(num_res_blocks=10**6), "num_res_blocks must be <= 32"),
        (
            VAEConfig(channel_mult=[1] * 9, down=[""] * 9, up=[""] * 9, encoder_blocks=["3d"] * 9),
            "<= 8 levels",
        ),
        (VAEConfig(base_channels="128"), "base_channels must be int"),
        (VAEConfig(latents_std=[math.inf] * 4), "latents_std must be a list of float"),
        (VAEConfig(encoder_blocks=["3d", "3d", "4d", "3d"]), r"are 2d or 3d, got \['4d'\]"),
    ],
)
def test_model_configs_refuse_absurd_structure_at_once(cfg, message):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        cfg.validate()
    assert time.perf_counter() - t0 < 1


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_train_timesteps": 10**12}, "num_train_timesteps must be <= 100,000"),
        ({"beta_end": math.nan}, "diffusion: beta_end must be a finite number"),
        ({"flow_shift": math.inf, "schedule": "flow", "objective": "flow"}, "flow_shift must be a finite"),
        ({"min_snr_gamma": math.nan}, "min_snr_gamma must be a finite number"),
    ],
)
def test_scheduler_configs_refuse_huge_and_non_finite_values(fields, message):
    with pytest.raises(UserError, match=message):
        DiffusionConfig(**fields).validate()


# ----------------------------------------------------------------------------- training configs


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.num_layers=1000000"], "num_layers 1000000 is more than 256"),
        (["model.num_heads=4096", "model.head_dim=6144"], r"training a DiT of .*M parameters .*needs about"),
        (["batch_size=100000000"], r"on batches of 100000000 x 9 latent frames of 8x8 needs about"),
        (["data.num_videos=1000000000000", "data.cache=somewhere"], "with a latent cache of"),
    ],
)
def test_dit_training_that_cannot_fit_is_refused(tmp_path, overrides, message):
    from longvideo.train.dit import DiTTrainConfig

    with pytest.raises(UserError, match=message):
        load_config(DiTTrainConfig, None, [f"out={tmp_path / 'run'}", *overrides])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.num_res_blocks=1000000"], "num_res_blocks must be <= 32"),
        (["model.base_channels=100000", "model.norm_groups=0"], r"training a VAE of .*needs about"),
        (["batch_size=100000", "video_frames=1025"], r"on batches of 100000 x 1025 frames"),
    ],
)
def test_vae_training_that_cannot_fit_is_refused(tmp_path, overrides, message):
    from longvideo.train.vae import VAETrainConfig

    with pytest.raises(UserError, match=message):
        load_config(VAETrainConfig, None, [f"out={tmp_path / 'run'}", *overrides])


def test_the_recipes_fit_a_small_machine(monkeypatch):
    """The shipped training recipes pass on a machine with 4 GiB free (the estimate is no false alarm)."""
    from pathlib import Path

    from longvideo.config import config_task
    from longvideo.train.dit import DiTTrainConfig
    from longvideo.train.vae import VAETrainConfig

    few_gib(monkeypatch, 4)
    recipes = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
    assert recipes
    for path in recipes:
        cfg = load_config(DiTTrainConfig if config_task(path) == "dit" else VAETrainConfig, path)
        if isinstance(cfg, DiTTrainConfig):
            cfg.vae = "shapes"  # its own VAE folder (runs/...) is not here: the bundled one's factors
            limits.check_dit_training(cfg)


# ----------------------------------------------------------------------------- VAE benchmarks and evaluation


def test_bench_and_recon_refuse_what_cannot_fit(monkeypatch):
    from longvideo.bench import bench_vae
    from longvideo.eval.recon import shapes_recon

    vae = CausalVAE(vae_preset("tiny")).eval()
    with pytest.raises(UserError, match=r"bench vae on 17 frames of 100000x100000 at once needs about"):
        bench_vae(vae, 65, 100_000, 100_000)
    with pytest.raises(UserError, match=r"--device 'tpu': expected cpu, cuda or cuda:N"):
        bench_vae(vae, 65, 64, 64, device="tpu")
    with pytest.raises(UserError, match=r"eval recon on videos of 999,997 frames needs about .*: use fewer"):
        shapes_recon(vae, num=1, frames=999_997)
    few_gib(monkeypatch, 0.001)
    with pytest.raises(UserError, match="or stream with --chunk K"):
        shapes_recon(vae, num=1, frames=33, latent_chunk=0)


def test_init_distributed_refuses_a_device_that_is_not_here(monkeypatch):
    from longvideo.parallel.dist import init_distributed

    with pytest.raises(UserError, match="device must be auto, cpu or cuda"):
        init_distributed("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="torch sees no CUDA device here"):
            init_distributed("cuda")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE='two' is not an integer"):
        init_distributed("cpu")


def test_cuda_memory_is_what_the_driver_has_free_plus_torchs_unused_cache(monkeypatch):
    """The CUDA branch (no GPU needed): free memory + what torch's caching allocator holds unused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: GiB)
    assert limits.available_memory("cuda:0") == 4 * GiB
    with pytest.raises(UserError, match=r"needs about 5\.0 GiB of memory; the GPU has 4\.0 GiB free"):
        limits.check_fits(5 * GiB, "it", torch.device("cuda", 0))
