"""The seeds' DiTs are expressible exactly by VideoDiT: each parity fixture (a tiny random instance of the
seed's own class, see the fixtures README) is loaded through a minimal key map and must reproduce the seed's
outputs. This guards the architecture; the converters for published checkpoints belong in convert/.

Fixtures are found through $LONGVIDEO_FIXTURES (default: `../shared/fixtures` next to the repository root).
"""

from __future__ import annotations

import re

import pytest
import torch

from longvideo.models.dit import DiTConfig, build_dit
from longvideo.models.dit.layers import abs_pos_embed
from seed_fixtures import FIXTURES, has_fixture, load_fixture


def fixture(name: str):
    if not has_fixture(name):
        pytest.skip(f"DiT parity fixture {name} not found in {FIXTURES} (set LONGVIDEO_FIXTURES)")
    meta, sd, io = load_fixture(name)
    return meta["config"], sd, io


def load_exact(cfg: DiTConfig, sd: dict[str, torch.Tensor]):
    model = build_dit(cfg)  # meta
    own = model.state_dict()
    assert set(sd) == set(own), (sorted(set(own) - set(sd))[:4], sorted(set(sd) - set(own))[:4])
    assert all(sd[k].shape == own[k].shape for k in sd)
    model.load_state_dict(sd, assign=True)
    return model.eval()


def conv2d_to_3d(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The seeds patchify frames with a Conv2d: our Conv3d kernel with temporal size 1."""
    return {**sd, "pos_embed.proj.weight": sd["pos_embed.proj.weight"][:, :, None]}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@torch.no_grad()
def test_open_sora_plan_v1_2():
    c, sd, io = fixture("osp_v1_2_dit")
    cfg = DiTConfig(
        family="full3d",
        in_channels=c["in_channels"],
        num_layers=c["num_layers"],
        num_heads=c["num_attention_heads"],
        head_dim=c["attention_head_dim"],
        text_dim=c["caption_channels"],
        patch_size=[c["patch_size_t"], c["patch_size"], c["patch_size"]],
        rope_scale=[c[f"interpolation_scale_{a}"] for a in "thw"],
    )
    model = load_exact(cfg, conv2d_to_3d(sd))  # same key names as the seed
    # the seed takes text as (B, 1, L, C) and its mask as (B, 1, L)
    text, mask = io["encoder_hidden_states"][:, 0], io["encoder_attention_mask"][:, 0]
    out = model(io["x"], io["timestep"], text, mask)
    torch.testing.assert_close(out, io["out"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("version", ["v1", "v3"])
@torch.no_grad()
def test_easyanimate(version):
    c, sd, io = fixture(f"easyanimate_{version}_dit")
    mm = c.get("motion_module_kwargs") or c["motion_module_kwargs_even"]
    odd = c.get("motion_module_kwargs_odd", {}).get("attention_block_types", [])
    cfg = DiTConfig(
        family="motion",
        in_channels=c["in_channels"],
        learn_sigma=c["out_channels"] == 2 * c["in_channels"],
        num_layers=c["num_layers"],
        num_heads=c["num_attention_heads"],
        head_dim=c["attention_head_dim"],
        text_dim=c["caption_channels"],
        abs_pos_embed="pixart",
        pos_embed_base=c["sample_size"] // c["patch_size"],
        pos_embed_interp=max(c["sample_size"] // 64, 1),
        uvit_skips=13 if c["enable_uvit"] else 0,  # EasyAnimate's U-ViT is fixed at 13 skips over 28 blocks
        motion_heads=mm["num_attention_heads"],
        motion_layers=mm["num_transformer_block"],
        motion_attn=[a.split("_")[0].lower() for a in mm["attention_block_types"]],
        motion_attn_odd=[a.split("_")[0].lower() for a in odd],
        motion_grid=mm["block_size"] if c["motion_module_type"] == "VanillaGrid" else 1,
        motion_norm_groups=c["norm_num_groups"],
    )
    ours = {
        k.replace("attn_temporal.temporal_transformer.", "attn_temporal."): v
        for k, v in conv2d_to_3d(sd).items()
        if not k.endswith("pos_encoder.pe")  # its sinusoid table: computed on the fly here
    }
    model = load_exact(cfg, ours)
    out = model(io["x"], io["timestep"], io["encoder_hidden_states"], io["encoder_attention_mask"])
    torch.testing.assert_close(out, io["out"], rtol=0, atol=1e-4)


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    """SD3's AdaLayerNormContinuous emits (scale, shift); ours (shift, scale)."""
    return torch.cat(w.chunk(2, dim=0)[::-1], dim=0)


@torch.no_grad()
def test_vchitect_2():
    c, sd, io = fixture("vchitect_2_dit")
    base, size = c["sample_size"] // c["patch_size"], c["pos_embed_max_size"]
    cfg = DiTConfig(
        family="parallel",
        in_channels=c["in_channels"],
        num_layers=c["num_layers"],
        num_heads=c["num_attention_heads"],
        head_dim=c["attention_head_dim"],
        text_dim=c["joint_attention_dim"],
        text_stream=True,
        adaln="zero",
        caption_proj="linear",
        pooled_dim=c["pooled_projection_dim"],
        abs_pos_embed="sd3",
        pos_embed_base=base,
        pos_embed_max=size,
    )
    d, last = cfg.dim, f"transformer_blocks.{cfg.num_layers - 1}."
    table = abs_pos_embed("sd3", d, size, size, base, 1.0, size, torch.device("cpu"))
    torch.testing.assert_close(sd["pos_embed.pos_embed"][0], table, rtol=0, atol=1e-6)  # computed here
    ours = {}
    for k, v in conv2d_to_3d(sd).items():
        if k == "pos_embed.pos_embed":
            continue
        if k.startswith(last) and re.search("add_q_proj|to_add_out_temporal", k):
            continue  # the last block's text outputs are discarded: our last block does not compute them
        if k.startswith((f"{last}norm1_context", "norm_out")):
            v = _swap_halves(v)
        if re.search(r"attn\.(to_out\.0|to_add_out)\.weight", k):
            v = v * 1.1  # Vchitect scales the spatial branch by 1.1 before these projections ...
        if re.search(r"attn\.to_out_context\.", k):
            v = v / 1.1  # ... and adds the cross branch after: folded into the weights
        ours[k] = v
    model = load_exact(cfg, ours)
    # the seed runs batch 1 with frames first, (1, F, C, H, W) -> (F, C, H, W), and no text mask
    x, text = io["x"].transpose(1, 2), io["encoder_hidden_states"]
    out = model(x, io["timestep"], text, pooled=io["pooled_projections"])
    torch.testing.assert_close(out[0].transpose(0, 1), io["out"], rtol=0, atol=1e-4)
