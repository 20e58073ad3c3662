"""Open-Sora-Plan v1.2 CausalVAEModel -> our CausalVAE: exact parity with the seed's own outputs.

The fixture (`osp_v1_2_vae.*`, see the fixtures README) is a tiny random CausalVAEModel in the released v1.2
block layout, run by the OSP code itself. Fixtures are found through $LONGVIDEO_FIXTURES (default:
`../shared/fixtures` next to the repository root).
"""

from __future__ import annotations

import pytest
import torch

from longvideo.convert.osp_vae import convert_osp_vae_state_dict, load_osp_vae, osp_vae_config
from longvideo.models.vae.layers import Norm, StreamState, Upsample
from longvideo.models.vae.model import split_frames
from seed_fixtures import FIXTURES, has_fixture, load_fixture

NAME = "osp_v1_2_vae"

needs_fixture = pytest.mark.skipif(
    not has_fixture(NAME),
    reason=f"OSP VAE parity fixture not found in {FIXTURES} (set LONGVIDEO_FIXTURES to its folder)",
)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(NAME)


@pytest.fixture(scope="module")
def vae(fixture):
    meta, sd, _ = fixture
    return load_osp_vae(meta["config"], sd)


@needs_fixture
def test_parity_with_osp_outputs(fixture, vae):
    meta, _, io = fixture
    assert meta["call"].startswith("latent_mean = model.encode(x).mean; decoded = model.decode(latent_mean)")
    assert all(p.dtype == torch.float32 for p in vae.parameters())  # fp16-stored weights, cast on load
    with torch.no_grad():
        latent_mean = vae.encode(io["x"]).mean
        decoded = vae.decode(latent_mean)
    assert list(latent_mean.shape) == meta["shapes"]["latent_mean"]
    assert list(decoded.shape) == meta["shapes"]["decoded"]
    assert (latent_mean - io["latent_mean"]).abs().max().item() <= 1e-4
    assert (decoded - io["decoded"]).abs().max().item() <= 1e-4


@needs_fixture
def test_config_translation(fixture, vae):
    cfg = osp_vae_config(fixture[0]["config"])
    assert (cfg.base_channels, cfg.channel_mult, cfg.latent_channels) == (32, [1, 2, 4, 4], 4)
    assert cfg.encoder_conv_in == "2d" and cfg.encoder_blocks == ["2d", "2d", "3d", "3d"]
    assert cfg.down == ["spatial", "spacetime", "spacetime", ""]
    assert cfg.up == ["", "spatial", "spacetime_trilinear", "spacetime_trilinear"]
    assert cfg.norm_over_time and not cfg.norm_over_time_in_2d_blocks
    # OSP's ResnetBlock2D runs frame by frame: its norms are per frame, every other norm spans time
    for name, m in vae.named_modules():
        if isinstance(m, Norm):
            per_frame = name.startswith(("encoder.down.0.", "encoder.down.1."))
            assert m.over_time is not per_frame, name


@needs_fixture
def test_streaming_refuses(fixture, vae):
    x = fixture[2]["x"]
    with torch.no_grad(), pytest.raises(ValueError, match="cannot be streamed"):
        next(vae.encode_stream(split_frames(x, 1)))
    with torch.no_grad(), pytest.raises(ValueError, match="cannot be streamed"):
        next(vae.decode_stream(fixture[2]["latent_mean"], chunk=1))


@needs_fixture
def test_state_dict_errors_are_clear(fixture):
    meta, sd, _ = fixture
    cfg = osp_vae_config(meta["config"])
    broken = dict(sd)
    del broken["decoder.up.2.upsample.conv.conv.weight"]
    with pytest.raises(ValueError, match=r"missing source keys \['decoder.up.2.upsample.conv.conv.weight'\]"):
        convert_osp_vae_state_dict(broken, cfg)
    broken = {**sd, "encoder.conv_in.weight": torch.zeros(32, 3, 5, 5)}
    with pytest.raises(ValueError, match=r"encoder.conv_in.weight \(32, 3, 5, 5\) cannot become"):
        convert_osp_vae_state_dict(broken, cfg)
    broken = {**sd, "encoder.down.0.attn.0.q.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unused source keys \['encoder.down.0.attn.0.q.weight'\]"):
        convert_osp_vae_state_dict(broken, cfg)


@needs_fixture
def test_no_quant_layer_is_identity(fixture):
    meta, sd, _ = fixture
    sd = {k: v for k, v in sd.items() if "quant_conv" not in k}
    vae = load_osp_vae({**meta["config"], "use_quant_layer": False}, sd)
    z = torch.randn(1, 4, 2, 3, 3)
    with torch.no_grad():
        assert torch.equal(vae.post_quant_conv(z), z)


def test_unsupported_config_is_named():
    cfg = {
        "hidden_size": 32,
        "encoder_attention": "AttnBlock3D",
        "decoder_attention": "AttnBlock3DFix",
        "encoder_temporal_downsample": ["", "TimeDownsample2x", "", ""],
        "decoder_spatial_upsample": ["", "Spatial2x3DUpsample", "", ""],
        "bogus": 1,
    }
    with pytest.raises(ValueError) as e:
        osp_vae_config(cfg)
    msg = str(e.value)
    named = ("encoder_attention='AttnBlock3D'", "encoder_temporal_downsample", "Spatial2x3DUpsample", "bogus")
    assert all(part in msg for part in named), msg


def test_trilinear_upsample_numerics_and_no_streaming():
    torch.manual_seed(0)
    up = Upsample(4, "spacetime_trilinear")
    x = torch.randn(1, 4, 3, 5, 5)
    y = up(x)
    assert y.shape == (1, 4, 5, 10, 10)
    f = torch.nn.functional.interpolate
    first = f(x[:, :, :1], scale_factor=(1, 2, 2), mode="trilinear")
    rest = f(x[:, :, 1:], scale_factor=(2, 2, 2), mode="trilinear")
    ref = up.conv(torch.cat([first, rest], dim=2))
    assert torch.equal(y, ref)
    assert up(x[:, :, :1]).shape == (1, 4, 1, 10, 10)  # a single frame: space only
    with pytest.raises(ValueError, match="cannot be streamed"):
        up(x, StreamState())
