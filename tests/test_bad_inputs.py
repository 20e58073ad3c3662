"""Inputs that used to end as `longvideo: internal error` (exit 1), hang, or die in a MemoryError: each is a
one-line `longvideo: error:` naming what is wrong, exit code 2, no traceback, and nothing written."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from longvideo.cli import main
from longvideo.pipelines.tiny import tiny_pipeline

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipes") / "tiny"
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A binary file, an mp4, and the smallest DiT / VAE training configs (every other field its default)."""
    from longvideo.data.video_io import VideoWriter

    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    video = tmp_path / "clip.mp4"
    with VideoWriter(video, 8.0) as w:
        w.write(np.zeros((2, 32, 32, 3), np.uint8))
    out = {"bin": binary, "mp4": video}
    for task in ("dit", "vae"):
        out[task] = tmp_path / f"{task}.yaml"
        out[task].write_text(f"task: {task}\nout: {tmp_path / 'run'}\n")
    return out


def error_line(capsys, *argv, timeout: float = 60.0) -> str:
    """Run `longvideo argv` in-process; assert exit 2 and one `longvideo: error:` line; return the line."""
    t0 = time.perf_counter()
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("longvideo: error: "), (code, err)
    assert "Traceback" not in err and "internal error" not in err
    assert time.perf_counter() - t0 < timeout, "refused, but only after doing the work"
    return lines[0]


# ----------------------------------------------------------------------------- config files and training


@pytest.mark.parametrize(
    "key, needle",
    [
        ("bin", "is not text (binary data: a video?): give a YAML file"),
        ("mp4", "is not text (binary data: a video?): give a YAML file"),
    ],
)
def test_binary_file_as_config(capsys, files, key, needle):
    assert needle in error_line(capsys, "train", files[key])


def test_folder_as_config(capsys, tmp_path):
    assert "is a folder: give a YAML file" in error_line(capsys, "train", tmp_path)


@pytest.mark.parametrize("task", ["dit", "vae"])
@pytest.mark.parametrize(
    "override, needle",
    [
        ("lr=-1", "lr must be > 0, got -1.0"),
        ("lr=.nan", "lr must be a finite number, got nan"),
        ("lr=.inf", "lr must be a finite number, got inf"),
        ("betas=[0.9]", "betas must be two numbers in [0, 1)"),
        ("ema_decay=2", "ema_decay must be in [0, 1]"),
        ("min_lr_ratio=.nan", "min_lr_ratio must be a finite number"),
        ("grad_clip=.nan", "grad_clip must be a finite number"),
        ("warmup=-1", "warmup must be >= 0"),
        ("keep=0", "keep must be >= 1"),
        ("seed=-1", "seed must be in 0..2**64-1"),
        ("salient_ratio=.nan", "salient_ratio must be a finite number"),
    ],
)
def test_training_numbers(capsys, files, task, override, needle):
    assert needle in error_line(capsys, "train", files[task], override)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("kl_weight=.nan", "kl_weight must be a finite number"),
        ("mse_weight=-1", "kl_weight, mse_weight, lpips_weight and gan_weight must be >= 0"),
        ("disc_lr=0", "disc_lr must be > 0"),
        ("max_start_frame=0", "max_start_frame >= 1"),
    ],
)
def test_vae_training_numbers(capsys, files, override, needle):
    assert needle in error_line(capsys, "train", files["vae"], override)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("text_drop=.nan", "text_drop must be a finite number"),
        ("device=tpu", "device must be auto, cpu or cuda, got 'tpu'"),
        ("text_max_length=0", "text_max_length must be in 1..4096"),
        ("data.fps=-1", "data.fps must be >= 0"),
        ("defaults.fps=.nan", "defaults.fps must be a finite number"),
        ("defaults.guidance=.inf", "defaults.guidance must be a finite number"),
    ],
)
def test_dit_training_settings(capsys, files, override, needle):
    assert needle in error_line(capsys, "train", files["dit"], override)


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(capsys, files):
    assert "device=cuda, but torch sees no CUDA device here" in error_line(
        capsys, "train", files["dit"], "device=cuda"
    )


@pytest.mark.parametrize("task", ["dit", "vae"])
def test_out_is_the_config_file(capsys, files, task):
    cfg = files[task]
    before = cfg.read_text()
    assert "is a file, not a folder" in error_line(capsys, "train", cfg, f"out={cfg}")
    assert cfg.read_text() == before


def test_latent_cache_is_a_file(capsys, files):
    line = error_line(capsys, "train", files["dit"], f"data.cache={files['bin']}")
    assert "data.cache=" in line and "is a file: give a folder for the latent cache" in line


@pytest.mark.parametrize(
    "task, override", [("dit", "model.num_layers=1000000"), ("vae", "model.num_res_blocks=1000000")]
)
def test_training_a_model_of_a_million_layers(capsys, files, task, override):
    assert "config: model:" in error_line(capsys, "train", files[task], override, timeout=20)


def test_training_a_model_that_cannot_fit(capsys, files):
    line = error_line(
        capsys, "train", files["dit"], "model.num_heads=4096", "model.head_dim=6144", timeout=20
    )
    assert "training a DiT of" in line and "needs about" in line and "free" in line


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--seed", "99999999999999999999999"], "argument --seed: a seed is an integer in 0..2**64-1"),
        (["--seed", "-1"], "argument --seed: a seed is an integer in 0..2**64-1"),
        (["--guidance", "inf"], "argument --guidance: must be a finite number"),
        (["--guidance", "nan"], "argument --guidance: must be a finite number"),
        (["--guidance", "0.5"], "argument --guidance: must be >= 1"),
        (["--cond-noise", "nan"], "argument --cond-noise: must be a finite number"),
        (["--frames", str(10**12)], "argument --frames: must be <= 1,000,000"),
        (["--steps", str(10**9)], "argument --steps: must be <= 10,000"),
        (["--height", "100000", "--width", "100000"], "window of 9 frames needs about"),
    ],
)
def test_generate(capsys, tmp_path, tiny, extra, needle):
    out = tmp_path / "v.mp4"
    assert needle in error_line(capsys, "generate", "a red circle", "--model", tiny, "-o", out, *extra)
    assert not out.exists()


def edited_copy(tiny: Path, tmp_path: Path, part: str, edit) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(tiny, folder)
    path = folder / part / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    "part, edit, needle",
    [
        ("transformer", lambda d: d.update(num_layers=10**6), "num_layers 1000000 is more than 256"),
        ("transformer", lambda d: d.update(num_layers=2.5), "num_layers must be int"),
        ("vae", lambda d: d.update(num_res_blocks=10**6), "num_res_blocks must be <= 32"),
        ("vae", lambda d: d.update(base_channels=-8), "channel counts"),
        (
            "scheduler",
            lambda d: d["diffusion"].update(num_train_timesteps=10**12),
            "num_train_timesteps must be <=",
        ),
        (
            "scheduler",
            lambda d: d["diffusion"].update(beta_start="0.1"),
            "beta_start must be",
        ),
        ("scheduler", lambda d: d["defaults"].update(steps=10**9), "steps must be in 1..10,000"),
        ("scheduler", lambda d: d["defaults"].update(frames=10**12), "frames must be in 1..1,000,000"),
        ("scheduler", lambda d: d["defaults"].update(height=10**5, width=10**5), "needs about"),
    ],
)
def test_pipeline_folder_with_huge_config(capsys, tmp_path, tiny, part, edit, needle):
    model = edited_copy(tiny, tmp_path, part, edit)
    out = tmp_path / "v.mp4"
    assert needle in error_line(capsys, "generate", "a red circle", "--model", model, "-o", out, timeout=20)
    assert not out.exists()


# ----------------------------------------------------------------------------- data, eval, bench, serve


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--seed", "-1"], "argument --seed: a seed is an integer"),
        (["--seed", "99999999999999999999999"], "argument --seed: a seed is an integer"),
        (["--quality", "99"], "argument --quality: must be <= 51"),
        (["--frames", str(10**9)], "argument --frames: must be <= 1,000,000"),
        (["-n", str(10**9)], "argument -n: must be <= 1,000,000"),
        (["--workers", "100000"], "argument --workers: must be <="),
    ],
)
def test_data_shapes(capsys, tmp_path, extra, needle):
    args = {"-n": "1", **dict(zip(extra[::2], extra[1::2], strict=True))}
    argv = [x for kv in args.items() for x in kv]
    assert needle in error_line(capsys, "data", "shapes", "-o", tmp_path / "ds", *argv)
    assert not (tmp_path / "ds").exists()  # refused before anything is written


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--device", "tpu"], "argument --device: expected cpu, cuda or cuda:N, got 'tpu'"),
        (["--device", "meta"], "argument --device: expected cpu, cuda or cuda:N"),
        (
            ["--height", "100000", "--width", "100000"],
            "bench vae on 17 frames of 100000x100000 at once needs about",
        ),
        (["--frames", str(10**9)], "argument --frames: must be <= 1,000,000"),
    ],
)
def test_bench_vae(capsys, tiny, extra, needle):
    assert needle in error_line(capsys, "bench", "vae", "--model", tiny, *extra)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--seed", "-1"], "argument --seed: a seed is an integer"),
        (["--frames", str(10**9)], "argument --frames: must be <= 1,000,000"),
        (["--frames", "999997"], "eval recon on videos of 999,997 frames needs about"),
        (["--num", str(10**9)], "argument --num: must be <= 1,000,000"),
    ],
)
def test_eval_recon(capsys, tiny, extra, needle):
    assert needle in error_line(capsys, "eval", "recon", "--model", tiny, "--json", *extra)


def test_binary_manifest(capsys, files):
    assert "is not a text file (binary data?)" in error_line(
        capsys, "eval", "shapes", "--manifest", files["bin"]
    )


def test_corrupt_shard_stamp_in_merge(capsys, tmp_path, files):
    shards = [tmp_path / "s0", tmp_path / "s1"]
    for s in shards:
        s.mkdir()
    (shards[0] / "curate.json").write_bytes(files["bin"].read_bytes())
    (shards[1] / "curate.json").write_text("{")
    line = error_line(capsys, "curate", "--merge", *shards, "-o", tmp_path / "out")
    assert "s0/curate.json" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["serve"], ["--traceback", "serve"]])
def test_serve_is_one_line_even_with_traceback(capsys, argv):
    assert "'serve' is not available yet" in error_line(capsys, *argv)


def test_an_error_never_shares_a_line_with_a_progress_bar(capsys, monkeypatch):
    import sys

    from tqdm import tqdm

    from longvideo import cli_commands
    from longvideo.errors import UserError

    def fails_mid_loop(a):
        bar = tqdm(total=10, desc="working", file=sys.stderr)
        bar.update(3)
        raise UserError("boom")

    monkeypatch.setattr(cli_commands, "cmd_models", fails_mid_loop)
    assert main(["models"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "longvideo: error: boom" and "working" in lines[-2]
