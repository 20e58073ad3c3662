"""Causal video VAE: shapes, causality, exact streaming, per-block behaviour (tiny configs, CPU)."""

import pytest
import torch

from longvideo.data.shapes import ShapesConfig, sample_dataset
from longvideo.models.vae.layers import (
    CausalConv3d,
    Downsample,
    FrameAttention,
    StreamState,
    TimeUpsample,
    Upsample,
    assign_stream_keys,
)
from longvideo.models.vae.model import CausalVAE, DiagonalGaussian, VAEConfig, split_frames, vae_preset


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return CausalVAE(vae_preset("tiny")).eval()


@pytest.mark.parametrize("t", [1, 5, 9, 17])
@pytest.mark.parametrize("latent", [4, 16])
def test_compression_shapes(t, latent):
    torch.manual_seed(0)
    cfg = vae_preset("tiny")
    cfg.latent_channels = latent
    vae = CausalVAE(cfg).eval()
    with torch.no_grad():
        post = vae.encode(torch.randn(2, 3, t, 16, 24))
        assert post.mean.shape == (2, latent, (t - 1) // 4 + 1, 2, 3)
        assert vae.decode(post.mean).shape == (2, 3, t, 16, 24)


@pytest.mark.parametrize("t, latent_chunk", [(13, 1), (17, 2), (21, 3), (9, 4), (25, 2)])
def test_streaming_equals_whole(vae, t, latent_chunk):
    torch.manual_seed(t)
    x = torch.rand(1, 3, t, 16, 16) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(x).mean
        streamed = torch.cat([p.mean for p in vae.encode_stream(split_frames(x, latent_chunk))], dim=2)
        assert (streamed - whole).abs().max() <= 1e-5
        frames = vae.decode(whole)
        chunks = list(vae.decode_stream(whole, chunk=latent_chunk))
        assert chunks[0].shape[2] == 1 + 4 * (min(latent_chunk, whole.shape[2]) - 1)
        assert (torch.cat(chunks, dim=2) - frames).abs().max() <= 1e-5


def test_causal_future_does_not_change_past(vae):
    torch.manual_seed(1)
    x = torch.randn(1, 3, 17, 16, 16)
    y = x.clone()
    y[:, :, 9:] = torch.randn_like(y[:, :, 9:])  # change frames 9.. (latent frames 3..)
    with torch.no_grad():
        a, b = vae.encode(x).mean, vae.encode(y).mean
        assert torch.equal(a[:, :, :3], b[:, :, :3]) and not torch.equal(a[:, :, 3:], b[:, :, 3:])
        da, db = vae.decode(a), vae.decode(b)
        assert torch.allclose(da[:, :, :9], db[:, :, :9], atol=0, rtol=0)


def test_state_is_functional(vae):
    x = torch.randn(1, 3, 13, 16, 16)
    chunks = split_frames(x, 1)
    with torch.no_grad():
        _, s1 = vae.encode_chunk(chunks[0], StreamState())
        a, _ = vae.encode_chunk(chunks[1], s1)
        b, _ = vae.encode_chunk(chunks[1], s1)  # re-running a chunk from the same state: same result
    assert torch.equal(a.mean, b.mean) and s1.nbytes() > 0


def test_chunk_alignment_errors(vae):
    with pytest.raises(ValueError, match="1 \\+ a multiple of 4"):
        vae.encode_chunk(torch.randn(1, 3, 4, 16, 16), StreamState())
    _, s = vae.encode_chunk(torch.randn(1, 3, 5, 16, 16), StreamState())
    with pytest.raises(ValueError, match="a multiple of 4"):
        vae.encode_chunk(torch.randn(1, 3, 5, 16, 16), s)


def test_norm_over_time_is_a_switch_that_refuses_streaming():
    cfg = vae_preset("tiny")
    cfg.norm_over_time = True
    vae = CausalVAE(cfg).eval()
    x = torch.randn(1, 3, 9, 16, 16)
    with torch.no_grad():
        assert vae.encode(x).mean.shape == (1, 4, 3, 2, 2)
        with pytest.raises(ValueError, match="cannot be streamed"):
            next(vae.encode_stream(split_frames(x, 1)))


def test_rms_norm_streams_exactly_and_keeps_flat_levels():
    from longvideo.models.vae.layers import Norm

    norm = Norm(4, 0)
    flat = torch.full((1, 4, 1, 3, 3), 2.0)
    flat[:, 1] = -1.0
    # per pixel over channels: rms of (2, -1, 2, 2) is sqrt(13/4); a GroupNorm would map a flat map to 0
    assert torch.allclose(norm(flat)[0, :, 0, 0, 0], torch.tensor([2.0, -1, 2, 2]) / (13 / 4) ** 0.5)
    assert torch.allclose(Norm(4, 4)(flat), torch.zeros_like(flat), atol=1e-3)  # one channel a group
    torch.manual_seed(0)
    cfg = vae_preset("tiny")
    cfg.norm_groups = 0
    vae = CausalVAE(cfg).eval()
    x = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(x).mean
        streamed = torch.cat([p.mean for p in vae.encode_stream(split_frames(x, 1))], dim=2)
        assert (streamed - whole).abs().max() <= 1e-5
        chunks = torch.cat(list(vae.decode_stream(whole, chunk=2)), dim=2)
        assert (chunks - vae.decode(whole)).abs().max() <= 1e-5


def test_causal_conv_replicates_first_frame_and_streams_any_split():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, 3, stride=(2, 1, 1))
    assign_stream_keys(conv)
    x = torch.randn(1, 2, 9, 5, 5)
    whole = conv(x)
    padded = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)
    ref = torch.nn.functional.conv3d(
        padded, conv.conv.weight, conv.conv.bias, stride=(2, 1, 1), padding=(0, 1, 1)
    )
    assert whole.shape[2] == 5 and torch.allclose(whole, ref, atol=1e-6)
    state, outs = StreamState(), []
    for part in (x[:, :, :3], x[:, :, 3:7], x[:, :, 7:]):  # a split the stride does not align with
        s = state.fork()
        outs.append(conv(part, s))
        state = s.advance()
    assert torch.allclose(torch.cat(outs, 2), whole, atol=1e-6)


def test_time_upsample_and_resamplers():
    up = TimeUpsample()
    x = torch.arange(3.0).view(1, 1, 3, 1, 1)
    assert up(x).flatten().tolist() == [0, 1, 1, 2, 2]  # the first frame stays one frame
    s = StreamState()
    s2 = s.fork()
    up(x, s2)
    assert up(x, s2.advance().fork()).flatten().tolist() == [0, 0, 1, 1, 2, 2]  # later chunks: all doubled
    d = Downsample(4, "spacetime")
    assert d(torch.randn(1, 4, 9, 16, 16)).shape == (1, 4, 5, 8, 8)
    assert Downsample(4, "spatial")(torch.randn(1, 4, 9, 16, 16)).shape == (1, 4, 9, 8, 8)
    assert Upsample(4, "spacetime")(torch.randn(1, 4, 5, 8, 8)).shape == (1, 4, 9, 16, 16)
    assert Upsample(4, "spatial")(torch.randn(1, 4, 5, 8, 8)).shape == (1, 4, 5, 16, 16)


def test_frame_attention_never_mixes_frames():
    torch.manual_seed(0)
    attn = FrameAttention(8, 4)
    x = torch.randn(1, 8, 3, 4, 4)
    y = x.clone()
    y[:, :, 2] += 1.0
    assert torch.equal(attn(x)[:, :, :2], attn(y)[:, :, :2])


def test_posterior():
    moments = torch.zeros(2, 8, 3, 2, 2)
    post = DiagonalGaussian(moments)
    assert torch.equal(post.kl(), torch.zeros(2))
    g = torch.Generator().manual_seed(0)
    a = post.sample(g)
    assert a.shape == (2, 4, 3, 2, 2) and torch.equal(a, post.sample(torch.Generator().manual_seed(0)))
    moments[:, :4] = 1.0
    assert torch.allclose(DiagonalGaussian(moments).kl(), torch.full((2,), 0.5 * 4 * 3 * 2 * 2))


def test_config_validation():
    with pytest.raises(ValueError, match="one entry per level"):
        VAEConfig(down=["spatial"]).validate()
    with pytest.raises(ValueError, match="norm_groups"):
        VAEConfig(base_channels=10).validate()
    with pytest.raises(KeyError, match="unknown VAE preset"):
        vae_preset("nope")
    assert VAEConfig().temporal_factor == 4 and VAEConfig().spatial_factor == 8


def test_gradients_flow_and_loss_falls():
    torch.manual_seed(0)
    vae = CausalVAE(vae_preset("tiny"))
    x = torch.stack([v.render_tensor(5) for v in sample_dataset(ShapesConfig(), 2, seed=0)])[..., ::2, ::2]
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2, betas=(0.5, 0.9))
    losses = []
    for _ in range(40):
        rec, post = vae(x, sample=False)
        loss = (rec - x).abs().mean() + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_input_clear_errors_and_non_strict(vae):
    from longvideo.errors import UserError

    with pytest.raises(UserError, match="needs 4k\\+1"):
        vae.encode(torch.randn(1, 3, 6, 16, 16))
    with pytest.raises(UserError, match="4 channels, this VAE takes 3"):
        vae.encode(torch.randn(1, 4, 5, 16, 16))
    with pytest.raises(UserError, match="multiples of 8"):
        vae.encode(torch.randn(1, 3, 5, 20, 16))
    with pytest.raises(UserError, match="must be"):
        vae.encode(torch.randn(3, 5, 16, 16))
    x = torch.randn(1, 3, 6, 16, 16)
    with torch.no_grad():
        padded = torch.cat([x, x[:, :, -1:].expand(-1, -1, 3, -1, -1)], dim=2)  # 6 -> 9 frames
        assert torch.equal(vae.encode(x, strict=False).mean, vae.encode(padded).mean)
        # causality: the padding changes no latent of the real frames
        real = vae.encode(x[:, :, :5]).mean
        assert torch.allclose(real, vae.encode(x, strict=False).mean[:, :, :2], atol=1e-6)
