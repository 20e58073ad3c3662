"""EasyAnimate AutoencoderKLMagvit (Slice VAE) -> our CausalVAE: exact parity with the seed's own outputs.

The fixture (`easyanimate_v3_slice_vae.*`, see the fixtures README) is a tiny random AutoencoderKLMagvit in
Slice-VAE mode (encoder mini-batch 8, decoder mini-batch 2 with feature sharing), run by the EasyAnimate
code itself. Fixtures are found through $LONGVIDEO_FIXTURES (default: `../shared/fixtures` next to the
repository root).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longvideo.convert.easyanimate_vae import (
    convert_easyanimate_vae_state_dict,
    easyanimate_vae_config,
    load_easyanimate_vae,
)
from longvideo.models.vae.layers import CausalConv3d, FrameAttention, Norm, StreamState, Upsample
from longvideo.models.vae.model import CausalVAE, VAEConfig, split_frames, vae_preset
from longvideo.models.vae.slicing import decode_slices, mini_batches
from seed_fixtures import FIXTURES, has_fixture, load_fixture

NAME = "easyanimate_v3_slice_vae"

needs_fixture = pytest.mark.skipif(
    not has_fixture(NAME),
    reason=f"EasyAnimate VAE parity fixture not found in {FIXTURES} (set LONGVIDEO_FIXTURES to its folder)",
)

BLOCKS = {
    "down_block_types": ["SpatialDownBlock3D"] + ["SpatialTemporalDownBlock3D"] * 3,
    "up_block_types": ["SpatialUpBlock3D"] + ["SpatialTemporalUpBlock3D"] * 3,
}


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(NAME)


@pytest.fixture(scope="module")
def vae(fixture):
    meta, sd, _ = fixture
    return load_easyanimate_vae(meta["config"], sd)


# ----------------------------------------------------------------------------- the fixture


@needs_fixture
def test_parity_with_easyanimate_outputs(fixture, vae):
    meta, _, io = fixture
    assert meta["call"].startswith("latent_mean = model.encode(x).latent_dist.mean; decoded = model.decode(")
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
    cfg = easyanimate_vae_config(fixture[0]["config"])
    assert (cfg.base_channels, cfg.channel_mult, cfg.latent_channels) == (32, [1, 2, 4, 4], 4)
    assert cfg.encoder_blocks == cfg.decoder_blocks == ["3d"] * 4
    assert cfg.down == ["spatial_3d", "spacetime", "spacetime", ""]
    assert cfg.up == ["", "spacetime_conv_linear", "spacetime_conv_linear", "spatial_3d"]  # reversed
    assert cfg.mid_attention and cfg.mid_attention_over_time and cfg.norm_over_time
    assert (cfg.time_padding, cfg.slice_encode, cfg.slice_decode) == ("centered_zeros", 8, 2)
    assert cfg.slice_feature_sharing and cfg.scaling_factor == 0.1825
    convs = [m for m in vae.modules() if isinstance(m, CausalConv3d) and m.kt > 1]
    theirs = [k for k, v in fixture[1].items() if v.dim() == 5 and v.shape[2] == 3]  # their k_t = 3 convs
    assert len(convs) == len(theirs) == 58 and all(m.time_pad == "centered_zeros" for m in convs)
    assert all(m.over_time for m in vae.modules() if isinstance(m, Norm))  # GroupNorm over 5D everywhere
    assert vae.encoder.mid.attn_1.span_time and vae.decoder.mid.attn_1.span_time


def test_config_modes():
    base = {"ch": 32, **BLOCKS, "slice_mag_vae": False}
    whole = easyanimate_vae_config(base)  # no chunking mode: the whole clip, causal padding
    assert (whole.time_padding, whole.slice_encode, whole.slice_decode) == ("causal", 0, 0)
    assert not whole.slice_feature_sharing
    tuple_strings = {k: str(tuple(v)) for k, v in BLOCKS.items()}  # EasyAnimate evals tuple strings
    sliced = easyanimate_vae_config({"ch": 32, **tuple_strings, "slice_compression_vae": True})
    assert (sliced.slice_encode, sliced.slice_decode) == (9, 3)  # its defaults; wins over slice_mag_vae
    assert sliced.down == ["spatial_3d", "spacetime", "spacetime", ""]


@needs_fixture
def test_streaming_refuses(fixture, vae):
    x, z = fixture[2]["x"], fixture[2]["latent_mean"]
    with torch.no_grad(), pytest.raises(ValueError, match="cannot be streamed"):
        next(vae.encode_stream(split_frames(x, 1)))
    with torch.no_grad(), pytest.raises(ValueError, match="cannot be streamed"):
        next(vae.decode_stream(z, chunk=1))
    with torch.no_grad(), pytest.raises(ValueError, match=r"slice mode \(slice_decode\)"):
        vae.decode_chunk(z, StreamState())


@needs_fixture
def test_state_dict_errors_are_clear(fixture):
    meta, sd, _ = fixture
    cfg = easyanimate_vae_config(meta["config"])
    broken = dict(sd)
    del broken["decoder.up_blocks.1.upsampler.conv.weight"]
    with pytest.raises(ValueError, match=r"missing source keys \['decoder.up_blocks.1.upsampler.conv.weig"):
        convert_easyanimate_vae_state_dict(broken, cfg)
    broken = {**sd, "encoder.mid_block.attentions.0.to_q.weight": torch.zeros(128, 64)}
    with pytest.raises(ValueError, match=r"to_q.weight \(128, 64\) cannot become encoder.mid.attn_1.q"):
        convert_easyanimate_vae_state_dict(broken, cfg)
    broken = {**sd, "encoder.down_blocks.0.gc_block.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unused source keys \['encoder.down_blocks.0.gc_block.weight'\]"):
        convert_easyanimate_vae_state_dict(broken, cfg)


def test_unsupported_config_is_named():
    cfg = {
        **BLOCKS,
        "down_block_types": ["SpatialDownBlock3D", "TemporalDownBlock3D", "SpatialTemporalDownBlock3D", ""],
        "mid_block_attention_type": "spatial",
        "cache_compression_vae": True,
        "spatial_group_norm": True,
        "sample_size": 256,
    }
    with pytest.raises(ValueError) as e:
        easyanimate_vae_config(cfg)
    msg = str(e.value)
    named = ("TemporalDownBlock3D", "'spatial'", "cache_compression_vae", "spatial_group_norm", "sample_size")
    assert all(part in msg for part in named), msg
    with pytest.raises(ValueError, match="slice_mag_vae=True"):  # EasyAnimate's default chunking mode
        easyanimate_vae_config({**BLOCKS})


# ----------------------------------------------------------------------------- the new switches


def test_slice_mini_batches_follow_easyanimate():
    assert mini_batches(17, 8) == [slice(0, 1), slice(1, 9), slice(9, 17)]  # frame 0 alone: T odd
    assert mini_batches(13, 8) == [slice(0, 1), slice(1, 9), slice(9, 13)]
    assert mini_batches(4, 2) == [slice(0, 2), slice(2, 4)]  # T even: no lone first frame

    class Recorder(torch.nn.Module):  # a decoder that records what each stage sees
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, z, starts_video=True):
            self.calls.append(("whole", z[0, 0, :, 0, 0].tolist(), starts_video))
            return z

        def latent_features(self, z):
            self.calls.append(("mid", z[0, 0, :, 0, 0].tolist(), None))
            return z

        def upsample(self, h, starts_video=True):
            self.calls.append(("up", h[0, 0, :, 0, 0].tolist(), starts_video))
            return h

    z = torch.arange(7.0).view(1, 1, 7, 1, 1)
    dec = Recorder()
    assert torch.equal(decode_slices(dec, z, 2, share=True), z)
    assert dec.calls == [
        ("whole", [0.0], True),  # the lone first frame: the whole decoder, no sharing
        ("mid", [1.0, 2.0, 3.0, 4.0], None),  # no previous mini-batch after the lone frame
        ("up", [1.0, 2.0], False),
        ("mid", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], None),  # previous and next
        ("up", [3.0, 4.0], False),
        ("mid", [3.0, 4.0, 5.0, 6.0], None),
        ("up", [5.0, 6.0], False),
    ]


def test_centered_zero_time_padding_and_no_streaming():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, 3, stride=(2, 2, 2), pad=(0, 1, 0, 1), time_pad="centered_zeros")
    x = torch.randn(1, 2, 8, 6, 6)
    ref = F.conv3d(F.pad(x, (0, 1, 0, 1, 1, 1)), conv.conv.weight, conv.conv.bias, stride=2)
    assert conv(x).shape == (1, 3, 4, 3, 3) and torch.equal(conv(x), ref)
    with pytest.raises(ValueError, match="cannot be streamed"):
        conv(x, StreamState())
    with pytest.raises(ValueError, match="unknown time padding"):
        CausalConv3d(2, 3, 3, time_pad="reflect")


def test_conv_then_linear_time_upsample():
    torch.manual_seed(0)
    up = Upsample(4, "spacetime_conv_linear")
    x = torch.randn(1, 4, 3, 5, 5)
    y = up.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))  # conv first, then time
    rest = F.interpolate(y[:, :, 1:], scale_factor=(2, 1, 1), mode="trilinear")
    assert torch.equal(up(x), torch.cat([y[:, :, :1], rest], dim=2))  # 3 -> 5 frames
    later = up(x, starts_video=False)  # a mini-batch that continues the video: every frame doubled
    assert torch.equal(later, F.interpolate(y, scale_factor=(2, 1, 1), mode="trilinear"))
    assert up(x[:, :, :1]).shape == (1, 4, 1, 10, 10)
    with pytest.raises(ValueError, match="cannot be streamed"):
        up(x, StreamState())


def test_attention_over_time_mixes_frames_and_refuses_streaming():
    torch.manual_seed(0)
    attn = FrameAttention(8, 4, span_time=True)
    x = torch.randn(1, 8, 3, 4, 4)
    y = x.clone()
    y[:, :, 2] += 1.0
    assert not torch.allclose(attn(x)[:, :, :2], attn(y)[:, :, :2])  # earlier frames see the future
    with pytest.raises(ValueError, match="cannot be streamed"):
        attn(x, StreamState())


def test_new_switches_default_to_the_old_behaviour_and_validate():
    cfg = VAEConfig()
    assert (cfg.time_padding, cfg.slice_encode, cfg.slice_decode) == ("causal", 0, 0)
    assert not cfg.slice_feature_sharing and not cfg.mid_attention_over_time
    with pytest.raises(ValueError, match="slice_feature_sharing needs slice_decode"):
        VAEConfig(slice_feature_sharing=True).validate()
    with pytest.raises(ValueError, match="unknown time_padding"):
        VAEConfig(time_padding="zeros").validate()
    with pytest.raises(ValueError, match="unknown down kind"):
        VAEConfig(down=["spatial", "spacetime", "spacetime", "temporal"]).validate()


def test_slice_mode_on_our_own_blocks():
    torch.manual_seed(0)
    whole = CausalVAE(vae_preset("tiny")).eval()
    cfg = vae_preset("tiny")
    cfg.slice_encode, cfg.slice_decode, cfg.slice_feature_sharing = 4, 1, True
    sliced = CausalVAE(cfg).eval()
    sliced.load_state_dict(whole.state_dict())
    x = torch.randn(1, 3, 9, 16, 16)
    with torch.no_grad():
        z, zw = sliced.encode(x).mean, whole.encode(x).mean
        assert z.shape == zw.shape == (1, 4, 3, 2, 2)
        # causal blocks: the lone first frame gives what the whole clip gives for it, the rest differs
        assert torch.allclose(z[:, :, :1], zw[:, :, :1], atol=1e-5)
        assert not torch.allclose(z[:, :, 1:], zw[:, :, 1:], atol=1e-4)
        out = sliced.decode(z)
        assert out.shape == (1, 3, 9, 16, 16)
        assert torch.allclose(out[:, :, :1], whole.decode(z)[:, :, :1], atol=1e-5)
        with pytest.raises(ValueError, match=r"slice mode \(slice_encode\)"):
            sliced.encode_chunk(x, StreamState())
