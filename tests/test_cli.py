"""The command line: real runs, and one-line errors with exit code 2 for bad input."""

import dataclasses
import json
import subprocess
import sys

import pytest

from longvideo.cli import build_parser, main
from longvideo.cli_commands import generation_request
from longvideo.data.shapes import HELD_OUT
from longvideo.models.text import TextEncoder
from longvideo.pipelines import GenerationRequest, VideoPipeline
from longvideo.pipelines.tiny import tiny_pipeline


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, needle):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("longvideo: error: ") and needle in lines[0], err
    assert "Traceback" not in err


def test_data_shapes_writes_videos_and_manifest(tmp_path, capsys):
    out = tmp_path / "ds"
    code, stdout, _ = run(capsys, "data", "shapes", "-n", "6", "--frames", "9", "--seed", "3", "-o", str(out))
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["written"] == 6
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and sorted(p.name for p in out.glob("*.mp4")) == sorted(r["path"] for r in rows)
    for r in rows:
        assert {"path", "caption", "num_frames", "fps", "height", "width", "objects", "background"} <= set(r)
        assert (r["num_frames"], r["fps"], r["height"], r["width"]) == (9, 8.0, 64, 64)
        assert all(not o["held_out"] and (o["color"], o["shape"]) not in HELD_OUT for o in r["objects"])
    # the files match their captions, judged from pixels only
    code, stdout, _ = run(capsys, "eval", "shapes", "--manifest", str(out / "manifest.jsonl"))
    assert code == 0 and json.loads(stdout)["correct"] >= 0.8
    code, stdout, _ = run(
        capsys, "eval", "shapes", str(out / rows[0]["path"]), "--prompt", rows[0]["caption"]
    )
    assert code == 0 and json.loads(stdout)["caption"] == rows[0]["caption"]
    # a rerun resumes (keeps every finished video); other settings in the same folder are refused
    code, stdout, _ = run(capsys, "data", "shapes", "-n", "6", "--frames", "9", "--seed", "3", "-o", str(out))
    assert code == 0 and json.loads(stdout)["kept"] == 6
    code, _, err = run(capsys, "data", "shapes", "-n", "6", "--frames", "17", "--seed", "3", "-o", str(out))
    assert_one_line_error(code, err, "other settings")


def test_data_shapes_held_out_only(tmp_path, capsys):
    out = tmp_path / "ho"
    assert (
        run(capsys, "data", "shapes", "-n", "5", "--frames", "5", "--held-out-only", "-o", str(out))[0] == 0
    )
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(any(o["held_out"] for o in r["objects"]) for r in rows)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "shapes", "-n", "0", "-o", "{tmp}/a"], "must be > 0"),
        (["data", "shapes", "-n", "-3", "-o", "{tmp}/a"], "must be > 0"),
        (["data", "shapes", "-n", "x", "-o", "{tmp}/a"], "invalid int value"),
        (["data", "shapes", "-n", "2", "-o", "{tmp}/a", "--colors", "pink"], "unknown color 'pink'"),
        (["data", "shapes", "-n", "2", "-o", "{tmp}/a", "--frames", "0"], "num_frames"),
        (["data", "shapes", "-n", "2", "-o", "{tmp}/file.txt/sub"], "cannot create output folder"),
        (["data", "shapes", "-n", "2"], "required"),
        (["eval", "shapes", "{tmp}/missing.mp4"], "missing.mp4"),
        (
            [
                "eval",
                "shapes",
                "{tmp}/file.txt",
                "--prompt",
                "a small red circle staying still on a black background",
            ],
            "file.txt",
        ),
        (["eval", "shapes", "--manifest", "{tmp}/nope.jsonl"], "manifest not found"),
        (["eval", "shapes"], "exactly one of"),
        (["generate", "a red circle", "--model", "nope"], "no pipeline 'nope'"),
        (["train", "{tmp}/x.yaml"], "config file not found"),
        # a model's own config checks (ValueError in the library) are one-line errors naming the key
        (["train", "{tmp}/dit.yaml", "model.head_dim=32"], "model: DiTConfig: full3d"),
        (["train", "{tmp}/dit.yaml", "model.num_layers=0"], "config: model: DiTConfig"),
        (["train", "{tmp}/vae.yaml", "model.latent_channels=0"], "config: model: channel"),
        (["eval", "recon", "--frames", "10"], "--frames"),
        (["eval", "recon", "--chunk", "-1"], "argument --chunk: must be >= 0"),
        (["eval", "recon", "--stream", "2"], "unrecognized arguments: --stream"),
        (["bench", "vae", "--chunk", "x"], "argument --chunk: expected an integer"),
        (["bench", "vae", "--no-stream"], "unrecognized arguments: --no-stream"),
        (["generate", "a red circle", "--steps", "x"], "argument --steps: invalid int value"),
        (["serve"], "'serve' is not available yet"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, needle):
    (tmp_path / "file.txt").write_text("not a video")
    for task in ("dit", "vae"):  # the smallest training configs: every other field its default
        (tmp_path / f"{task}.yaml").write_text(f"task: {task}\nout: {tmp_path / 'run'}\n")
    code, _, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert_one_line_error(code, err, needle)


def test_bad_prompt_for_eval(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    assert run(capsys, "data", "shapes", "-n", "1", "--frames", "5", "-o", str(tmp_path / "d"))[0] == 0
    (tmp_path / "d" / "000000.mp4").rename(video)
    code, _, err = run(
        capsys,
        "eval",
        "shapes",
        str(video),
        "--prompt",
        "a large pink circle staying still on a black background",
    )
    assert_one_line_error(code, err, "unknown color 'pink'")


def test_console_script_subprocess(tmp_path):
    """Through a real process: exit code 2, one line on stderr, no traceback."""
    r = subprocess.run(
        [sys.executable, "-m", "longvideo", "data", "shapes", "-n", "0", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "longvideo", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("longvideo ")


def test_generate_builds_one_request():
    """Options not given stay the request's defaults; every request field but `known` (a tensor) and `image`
    (a file, read into a frame) is an option of `longvideo generate`, spelt like the field."""
    assert generation_request(build_parser().parse_args(["generate", "a red circle"])) == GenerationRequest(
        "a red circle"
    )
    given = {"negative_prompt": "a white background", "frames": 65, "height": 48, "width": 80, "steps": 7,
             "guidance": 2.5, "seed": 3, "sampler": "ddim", "window": 17, "overlap": 1, "anchor": True,
             "cond_noise": 0.25}  # fmt: skip
    argv = ["generate", "a red circle"]
    for k, v in given.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    req = generation_request(build_parser().parse_args(argv))
    assert req == GenerationRequest("a red circle", **given)
    fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    assert fields - set(given) == {"prompt", "image", "known"}


def test_generate_sampler_and_negative_prompt_reach_the_pipeline(tmp_path, capsys, monkeypatch):
    import longvideo.pipelines.video as video

    folder = tmp_path / "tiny"
    tiny_pipeline().save_pretrained(folder)
    resolved, samplers, prompts = [], [], []
    frames, get_sampler, encode = VideoPipeline._frames, video.get_sampler, TextEncoder.encode

    def spy_frames(self, req, *args):
        resolved.append(req)
        return frames(self, req, *args)

    def spy_sampler(name):
        samplers.append(name)
        return get_sampler(name)

    def spy_encode(self, texts):
        prompts.append(list(texts))
        return encode(self, texts)

    monkeypatch.setattr(VideoPipeline, "_frames", spy_frames)
    monkeypatch.setattr(video, "get_sampler", spy_sampler)
    monkeypatch.setattr(TextEncoder, "encode", spy_encode)
    out = tmp_path / "v.mp4"
    code, stdout, _ = run(capsys, "generate", "a red circle", "--model", str(folder), "--sampler", "ddim",
                          "--negative-prompt", "a white background", "--guidance", "2", "--steps", "2",
                          "--frames", "5", "-o", str(out))  # fmt: skip
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["frames"] == 5 and out.is_file()
    (r,) = resolved
    assert (r.sampler, r.negative_prompt, r.guidance, r.steps) == ("ddim", "a white background", 2.0, 2)
    assert samplers[-1:] == ["ddim"] and prompts == [["a red circle", "a white background"]]
