"""`longvideo convert` and `VideoPipeline.from_pretrained(source folder)` on source folders built from the
parity fixtures (longvideo.convert.{sources,output}): the written folder reproduces the fixture, loads as a
pipeline, equals the in-memory conversion; wrong files get one-line errors naming the problem.

Fixtures are found through $LONGVIDEO_FIXTURES (default ../shared/fixtures).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from longvideo.cli import main
from longvideo.convert.output import convert_source
from longvideo.errors import UserError
from longvideo.pipelines import VideoPipeline
from longvideo.pipelines.folder import load_transformer
from seed_fixtures import FIXTURES, has_fixture, load_fixture

CLASSES = {"osp_v1_2_dit": "OpenSoraT2V", "easyanimate_v3_dit": "Transformer3DModel",
           "vchitect_2_dit": "VchitectXLTransformerModel", "osp_v1_2_vae": "CausalVAEModel",
           "easyanimate_v3_slice_vae": "AutoencoderKLMagvit"}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def fixture_config(name: str) -> dict:
    if not has_fixture(name):
        pytest.skip(f"fixture {name} not found in {FIXTURES} (set LONGVIDEO_FIXTURES)")
    return load_fixture(name)[0]["config"]


def component(root: Path, part: str, name: str, config: dict | None = None, cls: str | None = None) -> Path:
    """root/part/{config.json, diffusion_pytorch_model.safetensors} of fixture `name`, as diffusers saves."""
    if not has_fixture(name):
        pytest.skip(f"fixture {name} not found in {FIXTURES} (set LONGVIDEO_FIXTURES)")
    meta, sd, _ = load_fixture(name)
    d = root / part
    d.mkdir(parents=True)
    cfg = {"_class_name": cls or CLASSES[name], "_diffusers_version": "0.28.0", **(config or meta["config"])}
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(sd, d / "diffusion_pytorch_model.safetensors")
    return d


@pytest.fixture(scope="module")
def osp_source(tmp_path_factory) -> Path:
    """An OSP v1.2 source folder in diffusers' layout: transformer/, vae/, text_encoder/ + tokenizer/."""
    from longvideo.pipelines.tiny import tiny_text_encoder

    root = tmp_path_factory.mktemp("src") / "osp"
    component(root, "transformer", "osp_v1_2_dit")
    component(root, "vae", "osp_v1_2_vae")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        width = fixture_config("osp_v1_2_dit")["caption_channels"]
        tiny_text_encoder(dim=width).save_pretrained(root)
    return root


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


@torch.no_grad()
def test_cli_converts_osp_and_the_folder_reproduces_the_fixture(osp_source, tmp_path, capsys):
    dst = tmp_path / "osp-pipe"
    rc, out, err = run_cli(["convert", "--from", "osp-v1.2", str(osp_source), str(dst)], capsys)
    assert rc == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["written"] == ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"]
    assert summary["missing"] == {}
    index = json.loads((dst / "model_index.json").read_text())
    assert index["_converted_from"]["format"] == "osp-v1.2"
    assert index["text_encoder_config"]["max_length"] == 512
    sched = json.loads((dst / "scheduler" / "config.json").read_text())
    assert sched["diffusion"]["objective"] == "eps"
    c = fixture_config("osp_v1_2_dit")
    want = ((c["sample_size_t"] - 1) * 4 + 1, c["sample_size"][0] * 8)  # OSP's VAE: 4x in time, 8x in space
    assert (sched["defaults"]["frames"], sched["defaults"]["height"]) == want
    # the written transformer still reproduces the seed's outputs
    _, _, io = load_fixture("osp_v1_2_dit")
    model = load_transformer(dst / "transformer")
    out = model(
        io["x"], io["timestep"], io["encoder_hidden_states"][:, 0], io["encoder_attention_mask"][:, 0]
    )
    assert (out - io["out"]).abs().max().item() <= 1e-4


@torch.no_grad()
def test_from_pretrained_reads_the_source_folder_directly(osp_source, tmp_path):
    dst = tmp_path / "converted"
    convert_source("osp-v1.2", osp_source, dst)
    direct, converted = VideoPipeline.from_pretrained(osp_source), VideoPipeline.from_pretrained(dst)
    for a, b in zip(
        direct.transformer.state_dict().values(), converted.transformer.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    kw = dict(steps=1, frames=5, height=32, width=32, seed=3, progress=False)
    v1, v2 = direct("a red circle", **kw), converted("a red circle", **kw)
    assert v1.shape == (1, 3, 5, 32, 32) and torch.equal(v1, v2)


@torch.no_grad()
def test_easyanimate_v3_source_runs_as_a_pipeline(tmp_path):
    """EasyAnimate v3's transformer + Slice VAE fixtures + a T5 of the caption width, read directly."""
    from longvideo.pipelines.tiny import tiny_text_encoder

    src = tmp_path / "ea"
    component(src, "transformer", "easyanimate_v3_dit")
    component(src, "vae", "easyanimate_v3_slice_vae")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tiny_text_encoder(dim=fixture_config("easyanimate_v3_dit")["caption_channels"]).save_pretrained(src)
    pipe = VideoPipeline.from_pretrained(src)
    assert pipe.transformer.cfg.learn_sigma and pipe.text_encoder.cfg.max_length == 120
    assert (pipe.defaults.steps, pipe.defaults.height) == (25, pipe.transformer.cfg.pos_embed_base * 16)
    video = pipe("a red circle", steps=1, frames=5, height=32, width=32, progress=False)
    assert video.shape == (1, 3, 5, 32, 32) and torch.isfinite(video).all()


def test_vchitect_writes_a_transformer_only_folder(tmp_path, capsys):
    src = tmp_path / "vchitect"
    component(src, "transformer", "vchitect_2_dit")
    rc, out, err = run_cli(["convert", "--from", "vchitect-2", str(src), str(tmp_path / "v")], capsys)
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["written"] == ["transformer"]
    assert set(summary["missing"]) == {"pipeline", "vae"}
    with pytest.raises(UserError, match=r"VideoPipeline cannot run Vchitect-2\.0"):
        VideoPipeline.from_pretrained(src)


def test_a_weights_file_and_a_legacy_pickle(tmp_path):
    d = component(tmp_path / "ea", "transformer", "easyanimate_v3_dit")
    f = d / "diffusion_pytorch_model.safetensors"
    assert convert_source("easyanimate-v3", f, tmp_path / "a")["missing"]["vae"]  # a file + config.json
    _, sd, _ = load_fixture("easyanimate_v3_dit")
    f.unlink()
    torch.save({"state_dict": sd, "epoch": 3}, d / "checkpoint.ckpt")
    s = convert_source("easyanimate-v3", d, tmp_path / "b")  # unwrapped, weights_only
    assert s["transformer_params"] == sum(
        v.numel() for k, v in sd.items() if not k.endswith("pos_encoder.pe")
    )


# ----------------------------------------------------------------------------- wrong files


def cli_error(args: list[str], capsys) -> str:
    rc, out, err = run_cli(["convert", *args], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("longvideo: error: "), err
    return lines[0]


def test_another_formats_config_is_named(tmp_path, capsys):
    src = tmp_path / "ea"
    component(src, "transformer", "easyanimate_v3_dit")
    msg = cli_error(["--from", "osp-v1.2", str(src), str(tmp_path / "o")], capsys)
    assert "is the config of EasyAnimate v3 Transformer3DModel, not of Open-Sora-Plan" in msg
    assert msg.endswith("use --from easyanimate-v3")
    msg = cli_error(["--from", "easyanimate-v1", str(src), str(tmp_path / "o")], capsys)
    assert "use --from easyanimate-v3" in msg


def test_another_formats_weights_are_named(tmp_path, capsys):
    """An OSP config next to EasyAnimate weights: the error says what the weights are."""
    src = tmp_path / "mixed"
    osp = fixture_config("osp_v1_2_dit")
    d = component(src, "transformer", "easyanimate_v3_dit", config=osp, cls="OpenSoraT2V")
    msg = cli_error(["--from", "osp-v1.2", str(d), str(tmp_path / "o")], capsys)
    assert "holds an EasyAnimate Transformer3DModel (use --from easyanimate-v1 or easyanimate-v3)" in msg
    vae = tmp_path / "vae-as-dit"
    component(vae, "transformer", "osp_v1_2_vae")
    msg = cli_error(["--from", "osp-v1.2", str(vae), str(tmp_path / "o")], capsys)
    assert "is the config of 'CausalVAEModel', not of Open-Sora-Plan v1.2 OpenSoraT2V" in msg
    ea = tmp_path / "ea-with-osp-vae"
    component(ea, "transformer", "easyanimate_v3_dit")
    component(ea, "vae", "osp_v1_2_vae")
    msg = cli_error(["--from", "easyanimate-v3", str(ea), str(tmp_path / "o")], capsys)
    assert "holds an Open-Sora-Plan CausalVAEModel, not an EasyAnimate AutoencoderKLMagvit VAE" in msg
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))  # nothing half-written


def test_truncated_safetensors(tmp_path, capsys):
    d = component(tmp_path / "t", "transformer", "osp_v1_2_dit")
    f = d / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    msg = cli_error(["--from", "osp-v1.2", str(d), str(tmp_path / "o")], capsys)
    assert "diffusion_pytorch_model.safetensors: not a readable safetensors file, truncated or corrupt" in msg


def test_config_mismatch_names_the_key(tmp_path, capsys):
    c = fixture_config("osp_v1_2_dit")
    d = component(
        tmp_path / "m",
        "transformer",
        "osp_v1_2_dit",
        config={**c, "caption_channels": 2 * c["caption_channels"]},
    )
    msg = cli_error(["--from", "osp-v1.2", str(d), str(tmp_path / "o")], capsys)
    dim, text = c["num_attention_heads"] * c["attention_head_dim"], c["caption_channels"]
    assert (
        f"caption_projection.linear_1.weight is ({dim}, {text}), the config implies ({dim}, {2 * text})"
        in msg
    )
    d = component(
        tmp_path / "n", "transformer", "osp_v1_2_dit", config={**c, "num_layers": c["num_layers"] + 1}
    )
    msg = cli_error(["--from", "osp-v1.2", str(d), str(tmp_path / "o")], capsys)
    assert f"keys the config implies are missing (transformer_blocks.{c['num_layers']}." in msg


def test_unsupported_options_are_named(tmp_path, capsys):
    cfg = {**fixture_config("osp_v1_2_dit"), "use_rope": False, "patch_size_t": 2, "new_knob": 1}
    d = component(tmp_path / "u", "transformer", "osp_v1_2_dit", config=cfg)
    msg = cli_error(["--from", "osp-v1.2", str(d), str(tmp_path / "o")], capsys)
    assert all(s in msg for s in ("use_rope=False", "patch_size_t=2", "unknown option(s) ['new_knob']")), msg


def test_non_weights_pickle_and_missing_paths(tmp_path, capsys):
    d = component(tmp_path / "p", "transformer", "osp_v1_2_dit")
    (d / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"model": Path("x")}, d / "model.pt")  # not tensors: refused by weights_only
    msg = cli_error(["--from", "osp-v1.2", str(d), str(tmp_path / "o")], capsys)
    assert "not a weights-only torch checkpoint" in msg
    msg = cli_error(["--from", "osp-v1.2", str(tmp_path / "nope"), str(tmp_path / "o")], capsys)
    assert "no such file or folder" in msg
    msg = cli_error(["--from", "exvideo-svd", str(tmp_path / "p" / "transformer" / "config.json"),
                     str(tmp_path / "o")], capsys)  # fmt: skip
    assert "not a readable safetensors file" in msg
