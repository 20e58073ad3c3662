"""Weights load one way (models/weights.py): a VAE folder and a transformer folder, each config.json +
model.safetensors, are built on the meta device, checked (missing, unexpected, shapes: one-line errors),
and take the file's tensors as their parameters; bundled names and pipeline folders resolve in pipelines/.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import longvideo.models.weights as weights
from longvideo.errors import UserError
from longvideo.models.dit import DiTConfig, VideoDiT, dit_preset
from longvideo.models.vae.io import load_vae, save_vae
from longvideo.models.vae.model import CausalVAE, VAEConfig, vae_preset
from longvideo.models.weights import assign_weights, count_params, load_component
from longvideo.pipelines import folder as fs


def tiny_vae_cfg() -> VAEConfig:
    return dataclasses.replace(vae_preset("tiny"), base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                               encoder_blocks=["3d", "3d"], decoder_blocks=["3d", "3d"],
                               down=["spacetime", ""], up=["", "spacetime"], norm_groups=4)  # fmt: skip


def tiny_dit_cfg() -> DiTConfig:
    return dataclasses.replace(dit_preset("tiny-motion"), num_layers=2, uvit_skips=1)


# component -> (config, build, load)
COMPONENTS = {
    "vae": (tiny_vae_cfg, CausalVAE, load_vae),
    "transformer": (tiny_dit_cfg, VideoDiT, fs.load_transformer),
}


def write_folder(folder: Path, cfg, build) -> dict[str, torch.Tensor]:
    """A component folder written by hand (not by save_component): its state dict."""
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in build(cfg).state_dict().items()}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    save_file(sd, folder / "model.safetensors")
    return sd


def one_line_error(fn, match: str) -> str:
    with pytest.raises(UserError, match=match) as e:
        fn()
    assert len(str(e.value).splitlines()) == 1, str(e.value)
    return str(e.value)


@pytest.mark.parametrize("component", COMPONENTS)
def test_loads_the_file_onto_a_meta_built_module(component, tmp_path, monkeypatch):
    make_cfg, build, load = COMPONENTS[component]
    sd = write_folder(tmp_path / component, make_cfg(), build)
    read = []
    monkeypatch.setattr(weights, "load_file", lambda p: read.append(load_file(p)) or read[-1])
    model = load(tmp_path / component)
    assert isinstance(model, build) and not model.training
    params = dict(model.named_parameters())
    assert params and not any(p.is_meta for p in params.values())
    assert not any(b.is_meta for b in model.buffers())
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
        assert v.data_ptr() == read[0][k].data_ptr(), f"{k} was copied"  # assign=True: the file's tensor


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_is_honoured(component, dtype, tmp_path):
    make_cfg, build, load = COMPONENTS[component]
    sd = write_folder(tmp_path / component, make_cfg(), build)
    model = load(tmp_path / component, dtype)
    assert {v.dtype for v in model.state_dict().values()} == {dtype}
    k = next(iter(sd))
    assert torch.equal(model.state_dict()[k], sd[k].to(dtype))


@pytest.mark.parametrize("component", COMPONENTS)
def test_mismatched_weights_are_one_line_errors(component, tmp_path):
    make_cfg, build, load = COMPONENTS[component]
    folder = tmp_path / component
    sd = write_folder(folder, make_cfg(), build)
    first, last = sorted(sd)[0], sorted(sd)[-1]

    def rewrite(**change):
        save_file({**sd, **change}, folder / "model.safetensors")

    rewrite()
    sd_missing = {k: v for k, v in sd.items() if k != last}
    save_file(sd_missing, folder / "model.safetensors")
    msg = one_line_error(lambda: load(folder), r"1 missing, e\.g\. \[")
    assert last in msg and "0 unexpected" in msg and str(folder) in msg
    rewrite(**{"extra.weight": torch.zeros(2)})
    msg = one_line_error(lambda: load(folder), r"0 missing.*1 unexpected, e\.g\. \['extra\.weight'\]")
    rewrite(**{first: torch.zeros(*sd[first].shape, 2)})
    msg = one_line_error(lambda: load(folder), r"has shape .*config\.json implies .*\(1 mismatched\)")
    assert first in msg
    rewrite(**{first: torch.zeros(sd[first].shape, dtype=torch.int32)})  # an integer tensor for a float one
    msg = one_line_error(lambda: load(folder), r"is torch\.int32, the model needs a floating tensor")
    assert first in msg
    # a config the weights were not written for: the same check, nothing loaded at random
    rewrite()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["in_channels"] = 5
    (folder / "config.json").write_text(json.dumps(cfg))
    one_line_error(lambda: load(folder), "mismatched")


@pytest.mark.parametrize("component", COMPONENTS)
def test_bad_folders_are_one_line_errors(component, tmp_path):
    make_cfg, build, load = COMPONENTS[component]
    name = {"vae": "VAE", "transformer": "transformer"}[component]
    one_line_error(lambda: load(tmp_path / "nothing"), f"no {name} at .*config.json \\+ model.safetensors")
    folder = tmp_path / component
    write_folder(folder, make_cfg(), build)
    (folder / "model.safetensors").write_bytes(b"garbage")
    one_line_error(lambda: load(folder), r"model\.safetensors: cannot read weights")
    (folder / "model.safetensors").unlink()
    one_line_error(lambda: load(folder), r"model\.safetensors: cannot read weights")
    (folder / "config.json").write_text(json.dumps({"no_such_field": 1}))
    one_line_error(lambda: load(folder), r"config\.json: unknown \w+Config field\(s\) \['no_such_field'\]")
    (folder / "config.json").write_text("{")
    one_line_error(lambda: load(folder), r"config\.json: unreadable JSON")


@pytest.mark.parametrize("component", COMPONENTS)
def test_save_and_load_round_trip(component, tmp_path):
    make_cfg, build, load = COMPONENTS[component]
    torch.manual_seed(1)
    model = build(make_cfg())
    if component == "vae":
        save_vae(model, tmp_path / "c", dtype=torch.bfloat16)
    else:
        fs.save_transformer(model.to(torch.bfloat16), tmp_path / "c")
    assert not list((tmp_path / "c").glob(".*"))  # the temporary weights file is gone
    with safe_open(tmp_path / "c" / "model.safetensors", "pt") as f:
        assert f.metadata()["component"] == component
    loaded = load(tmp_path / "c", torch.bfloat16)
    assert loaded.cfg == model.cfg and count_params(loaded) == count_params(model)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.to(torch.bfloat16)), k


def test_assign_weights_takes_the_tensors_without_a_copy():
    cfg = tiny_dit_cfg()
    torch.manual_seed(0)
    sd = VideoDiT(cfg).state_dict()
    with torch.device("meta"):
        model = VideoDiT(cfg)
    assert all(p.is_meta for p in model.parameters())
    assign_weights(model, sd, "here", torch.float32)
    assert all(p.data_ptr() == sd[k].data_ptr() for k, p in model.named_parameters())
    with torch.device("meta"):
        other = VideoDiT(dataclasses.replace(cfg, num_layers=1, uvit_skips=0))
    one_line_error(lambda: assign_weights(other, sd, "here", torch.float32), r"^here: weights do not match")


def test_load_component_takes_any_config_and_builder(tmp_path):
    write_folder(tmp_path / "v", tiny_vae_cfg(), CausalVAE)
    built = []

    def build(cfg: VAEConfig) -> CausalVAE:
        built.append(torch.empty(1).device)  # built under the meta device
        return CausalVAE(cfg)

    vae = load_component(tmp_path / "v", VAEConfig, build, torch.float32, "VAE")
    assert isinstance(vae, CausalVAE) and built == [torch.device("meta")]


def test_bundled_names_and_pipeline_folders_resolve_in_pipelines(tmp_path):
    if not (fs.ASSETS / "shapes" / "model_index.json").is_file():
        pytest.skip("the bundled shapes model is not installed")
    assert fs.resolve_component("shapes", "vae") == fs.ASSETS / "shapes" / "vae"
    assert fs.resolve_component(fs.ASSETS / "shapes", "transformer") == fs.ASSETS / "shapes" / "transformer"
    assert fs.resolve_component(fs.ASSETS / "shapes" / "vae", "vae") == fs.ASSETS / "shapes" / "vae"
    vae = fs.load_vae("shapes")
    assert isinstance(vae, CausalVAE) and not any(p.is_meta for p in vae.parameters())
    one_line_error(lambda: fs.resolve_component(tmp_path, "vae"), r"no VAE at .*a bundled name \(shapes\)")
    one_line_error(lambda: load_vae("shapes"), "no VAE at 'shapes'")  # models/ knows no bundled names


def test_convert_and_models_do_not_import_pipelines():
    code = (
        "import sys, longvideo.convert.output, longvideo.convert.files, longvideo.models.vae.io, "
        "longvideo.models.weights; print([m for m in sys.modules if m.startswith('longvideo.pipelines')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_count_params_is_defined_once():
    import longvideo.models.dit as dit
    import longvideo.models.dit.model as dit_model
    import longvideo.models.vae.model as vae_model

    assert not any(hasattr(m, "count_params") for m in (dit, dit_model, vae_model))
    with torch.device("meta"):
        assert count_params(torch.nn.Linear(3, 2)) == 8


# ----------------------------------------------------------------------------- untrusted folders (#21)

BAD_CONFIGS = {
    "vae": [("base_channels", "128", r"VAEConfig\.base_channels must be int, got '128'"),
            ("base_channels", 8.5, r"VAEConfig\.base_channels must be int"),
            ("base_channels", True, r"VAEConfig\.base_channels must be int"),
            ("channel_mult", [1, "2"], r"VAEConfig\.channel_mult must be list\[int\]"),
            ("scaling_factor", None, r"VAEConfig\.scaling_factor must be float"),
            ("base_channels", -8, r"bad VAEConfig \(channel counts"),
            ("num_res_blocks", 0, r"bad VAEConfig"),
            ("latent_channels", -4, r"bad VAEConfig"),
            ("norm_groups", -1, r"bad VAEConfig \(norm_groups must be >= 0"),
            ("base_channels", 10**12, r"config\.json: cannot build the VAE from it")],
    "transformer": [("num_layers", "2", r"DiTConfig\.num_layers must be int, got '2'"),
                    ("patch_size", "x", r"DiTConfig\.patch_size must be list\[int\]"),
                    ("family", 3, r"DiTConfig\.family must be str"),
                    ("norm_eps", "x", r"DiTConfig\.norm_eps must be float"),
                    ("num_layers", -1, r"bad DiTConfig"),
                    ("head_dim", -24, r"bad DiTConfig"),
                    ("cond_channels", -3, r"bad DiTConfig")],
}  # fmt: skip


@pytest.mark.parametrize("component, field, value, match",
                         [(c, *case) for c, cases in BAD_CONFIGS.items() for case in cases])  # fmt: skip
def test_configs_with_wrong_types_or_sizes_are_one_line_errors(component, field, value, match, tmp_path):
    make_cfg, build, load = COMPONENTS[component]
    folder = tmp_path / component
    write_folder(folder, make_cfg(), build)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, field: value}))
    msg = one_line_error(lambda: load(folder), match)
    assert str(folder / "config.json") in msg


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_files_linked_out_of_the_folder_are_refused(component, tmp_path):
    make_cfg, build, load = COMPONENTS[component]
    folder = tmp_path / component
    write_folder(folder, make_cfg(), build)
    for name in ("model.safetensors", "config.json"):
        (folder / name).rename(tmp_path / name)
        (folder / name).symlink_to(tmp_path / name)
        one_line_error(lambda: load(folder), rf"{name}: resolves to .*, outside .*{component}")
        (folder / name).unlink()
        (tmp_path / name).rename(folder / name)
    load(folder)


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory) -> Path:
    from longvideo.pipelines.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("pipe") / "tiny"
    tiny_pipeline().save_pretrained(folder)
    return folder


def test_pipeline_components_linked_out_of_the_folder_are_refused(pipeline_folder, tmp_path):
    import shutil

    from longvideo.pipelines import VideoPipeline

    for part in ("vae", "transformer", "scheduler", "tokenizer", "text_encoder"):
        pipe = tmp_path / part / "pipe"
        shutil.copytree(pipeline_folder, pipe)
        shutil.move(pipe / part, tmp_path / part / "elsewhere")
        (pipe / part).symlink_to(tmp_path / part / "elsewhere", target_is_directory=True)
        one_line_error(lambda p=pipe: VideoPipeline.from_pretrained(p), rf"{part}: resolves to .*, outside")
    pipe = tmp_path / "index" / "pipe"
    shutil.copytree(pipeline_folder, pipe)
    (pipe / "model_index.json").rename(tmp_path / "index" / "model_index.json")
    (pipe / "model_index.json").symlink_to(tmp_path / "index" / "model_index.json")
    one_line_error(lambda: VideoPipeline.from_pretrained(pipe), r"model_index\.json: resolves to .*, outside")


@pytest.mark.parametrize(
    "file, change, match",
    [("vae/config.json", {"base_channels": "8"}, r"VAEConfig\.base_channels must be int"),
     ("transformer/config.json", {"num_heads": -2}, r"bad DiTConfig"),
     ("model_index.json", {"text_encoder_config": [16]}, "text_encoder_config must be a JSON object"),
     ("model_index.json", {"text_encoder_config": {"max_length": "16"}}, r"TextEncoderConfig\.max_length"),
     ("model_index.json", {"_format": True}, "not a VideoPipeline folder"),
     ("scheduler/config.json", {"diffusion": {"num_train_timesteps": "9"}}, r"DiffusionConfig\.\w+ must be"),
     ("scheduler/config.json", {"defaults": {"steps": 2.5}}, r"PipelineDefaults\.steps must be int")],
)  # fmt: skip
def test_generate_with_a_bad_pipeline_config_fails_in_one_line(
    pipeline_folder, tmp_path, capsys, file, change, match
):
    import shutil

    from longvideo.cli import main

    pipe = tmp_path / "pipe"
    shutil.copytree(pipeline_folder, pipe)
    data = json.loads((pipe / file).read_text())
    data.update({k: {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
                 for k, v in change.items()})  # fmt: skip
    (pipe / file).write_text(json.dumps(data))
    out_mp4 = tmp_path / "out.mp4"
    rc = main(
        [
            "generate",
            "a red circle",
            "--model",
            str(pipe),
            "--frames",
            "5",
            "--steps",
            "1",
            "-o",
            str(out_mp4),
        ]
    )
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("longvideo: error: "), err
    assert re.search(match, lines[0]), lines[0]
    assert not out_mp4.exists()
