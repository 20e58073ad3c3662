"""`longvideo models` and `longvideo generate` through the command line."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import numpy as np
import pytest
import torch

from longvideo.cli import main
from longvideo.data.video_io import probe

torch.set_num_threads(1)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, needle):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("longvideo: error: "), err
    assert needle in lines[0] and "Traceback" not in err


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from longvideo.pipelines.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("cli") / "tiny"
    tiny_pipeline().save_pretrained(folder)
    return folder


def test_models_json(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    rows = json.loads(out)
    dits = {r["name"]: r for r in rows if r["component"] == "transformer"}
    assert {r["family"] for r in dits.values()} == {"motion", "full3d", "parallel"}
    assert dits["osp-v1.2"]["family"] == "full3d" and 2.5e9 <= dits["osp-v1.2"]["params"] <= 2.95e9
    vaes = {r["name"]: r for r in rows if r["component"] == "vae"}
    assert vaes["osp-v1.2"]["compression"] == "4x8x8" and vaes["tiny"]["params"] > 0
    assert any(r["component"] == "pipeline" and r["name"] == "shapes" for r in rows)
    code, out, _ = run(capsys, "models")
    assert code == 0 and "osp-v1.2" in out and "2771.9M" in out


def test_generate_uses_the_bundled_model_by_default(capsys, tmp_path):
    out = tmp_path / "x.mp4"
    prompt = "a large red circle moving right quickly on a black background"
    code, stdout, _ = run(capsys, "generate", prompt, "--frames", "9", "--steps", "2", "-o", out)
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["frames"] == 9
    info = probe(out)
    assert (info.num_frames, info.height, info.width) == (9, 64, 64)


def test_generate_without_bundled_model(capsys, tmp_path, monkeypatch):
    import longvideo.pipelines.folder as folder

    monkeypatch.setattr(folder, "ASSETS", tmp_path / "no_assets")
    code, _, err = run(capsys, "generate", "a red circle", "-o", tmp_path / "x.mp4")
    assert_one_line_error(code, err, "bundled model 'shapes' is not installed in this build")
    assert not (tmp_path / "x.mp4").exists()


def test_generate_writes_video(capsys, tmp_path, tiny_dir):
    out = tmp_path / "t2v.mp4"
    prompt = "a small blue square staying still on a white background"
    code, stdout, _ = run(capsys, "generate", prompt, "--model", tiny_dir, "--frames", "6", "--steps", "2",
                          "--seed", "1", "-o", out)  # fmt: skip
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["path"] == str(out) and summary["frames"] == 6 and summary["seconds"] > 0
    info = probe(out)
    assert (info.num_frames, info.height, info.width) == (6, 32, 32)


def test_generate_from_image(capsys, tmp_path, tiny_dir):
    Image = pytest.importorskip("PIL.Image")
    png = tmp_path / "first.png"
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(png)
    out = tmp_path / "i2v.mp4"
    code, stdout, _ = run(capsys, "generate", "a red circle", "--model", tiny_dir, "--image", png,
                          "--frames", "5", "--steps", "1", "--guidance", "1", "-o", out)  # fmt: skip
    assert (
        code == 0
        and json.loads(stdout.strip().splitlines()[-1])["frames"] == 5
        and probe(out).num_frames == 5
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--height", "40"], "height 40 is not a multiple of 16"),
        (["--frames", "0"], "--frames: must be >= 1, got 0"),
        (["--image", "{tmp}/missing.png"], "missing.png"),
        (["--steps", "0"], "steps must be an integer >= 1"),
    ],
)
def test_generate_bad_input(capsys, tmp_path, tiny_dir, args, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run(
        capsys, "generate", "a red circle", "--model", tiny_dir, *argv, "-o", tmp_path / "o.mp4"
    )
    assert_one_line_error(code, err, needle)
    code, _, err = run(capsys, "generate", "", "--model", tiny_dir, "-o", tmp_path / "o.mp4")
    assert_one_line_error(code, err, "prompt is empty")
