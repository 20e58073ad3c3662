"""The seeds' DiTs through our converters (longvideo.convert.{osp,easyanimate,vchitect}_dit): each parity
fixture (a tiny random instance of the seed's own class, see the fixtures README) is converted from its
config and state dict alone and must reproduce the seed's outputs (float32, max abs difference <= 1e-4).

Fixtures are found through $LONGVIDEO_FIXTURES (default: `../shared/fixtures` next to the repository root).
"""

from __future__ import annotations

import pytest
import torch

from longvideo.convert.easyanimate_dit import easyanimate_dit_config, load_easyanimate_dit
from longvideo.convert.osp_dit import load_osp_dit, osp_dit_config
from longvideo.convert.vchitect_dit import load_vchitect_dit, vchitect_dit_config
from seed_fixtures import FIXTURES, has_fixture, load_fixture


def fixture(name: str):
    if not has_fixture(name):
        pytest.skip(f"DiT parity fixture {name} not found in {FIXTURES} (set LONGVIDEO_FIXTURES)")
    meta, sd, io = load_fixture(name)
    return meta["config"], sd, io


def check(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    print(f"{name}: max abs diff {err:.2e}")
    assert err <= 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def test_open_sora_plan_v1_2():
    c, sd, io = fixture("osp_v1_2_dit")
    model = load_osp_dit(c, sd)
    cfg = osp_dit_config(c)
    p, scale = c["patch_size"], [c[f"interpolation_scale_{a}"] for a in "thw"]
    assert (cfg.family, cfg.patch_size, cfg.rope_scale) == ("full3d", [1, p, p], scale)
    # the seed takes text as (B, 1, L, C) and its mask as (B, 1, L), 1 = keep
    text, mask = io["encoder_hidden_states"][:, 0], io["encoder_attention_mask"][:, 0]
    check("osp_v1_2_dit", model(io["x"], io["timestep"], text, mask), io["out"])


@pytest.mark.parametrize("version", ["v1", "v3"])
@torch.no_grad()
def test_easyanimate(version):
    c, sd, io = fixture(f"easyanimate_{version}_dit")
    model = load_easyanimate_dit(c, sd)
    cfg = easyanimate_dit_config(c)
    assert cfg.learn_sigma == (c["out_channels"] == 2 * c["in_channels"]) and cfg.family == "motion"
    assert cfg.uvit_skips == (13 if c["enable_uvit"] else 0)
    if version == "v1":  # VanillaGrid
        assert (cfg.motion_grid, cfg.motion_attn_odd) == (c["motion_module_kwargs"]["block_size"], [])
    else:  # even / odd motion modules, the odd ones with global attention
        assert (cfg.motion_grid, cfg.motion_attn_odd) == (1, ["temporal", "global"])
    out = model(io["x"], io["timestep"], io["encoder_hidden_states"], io["encoder_attention_mask"])
    check(f"easyanimate_{version}_dit", out, io["out"])


@torch.no_grad()
def test_vchitect_2():
    c, sd, io = fixture("vchitect_2_dit")
    model = load_vchitect_dit(c, sd)
    cfg = vchitect_dit_config(c)
    assert (cfg.family, cfg.adaln, cfg.text_stream) == ("parallel", "zero", True)
    assert cfg.pooled_dim == c["pooled_projection_dim"]
    # the seed runs batch 1 with frames first, (1, F, C, H, W) -> (F, C, H, W), and no text mask
    x, text = io["x"].transpose(1, 2), io["encoder_hidden_states"]
    out = model(x, io["timestep"], text, pooled=io["pooled_projections"])
    check("vchitect_2_dit", out[0].transpose(0, 1), io["out"])
