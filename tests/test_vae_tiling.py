"""Spatial tiling of the causal VAE: grid and blend weights, exactness where exactness is owed (untiled
fallback, a VAE without spatial context, streaming), and the measured error of tiling a real VAE."""

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from longvideo.data.shapes import ShapesConfig, sample_dataset
from longvideo.models.vae.model import CausalVAE, DiagonalGaussian, split_frames, vae_preset
from longvideo.models.vae.tiling import (
    TilingConfig,
    span_weights,
    tile_spans,
    tiled_decode,
    tiled_decode_chunk,
    tiled_encode,
    tiled_encode_chunk,
    tiling_error,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny VAE's convs are too small to share: with threads (and a busy machine) they run ~50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return CausalVAE(vae_preset("tiny")).eval()


def shapes_video(size: int, t: int, seed: int = 0) -> torch.Tensor:
    """A 48x48 shapes-world clip bilinearly upsampled to (1, 3, t, size, size): smooth edges."""
    (video,) = sample_dataset(ShapesConfig(height=48, width=48), 1, seed)
    x = video.render_tensor(t).transpose(0, 1)  # (t, 3, 48, 48)
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return y.transpose(0, 1).unsqueeze(0).contiguous()


class PointwiseVAE:
    """A stand-in VAE without spatial context (8x8 average pool / nearest upsampling): tiling it is exact,
    so any difference from untiled comes from the grid, the placement or the weights."""

    cfg = SimpleNamespace(spatial_factor=8)

    def encode_chunk(self, x, state):
        m = F.avg_pool3d(x, (1, 8, 8))
        return DiagonalGaussian(torch.cat([m, 0.5 * m - 1.0], dim=1)), state

    def decode_chunk(self, z, state):
        return F.interpolate(z, scale_factor=(1, 8, 8), mode="nearest") * 2.0 + 0.5, state

    def encode(self, x):
        return self.encode_chunk(x, None)[0]

    def decode(self, z):
        return self.decode_chunk(z, None)[0]


# ----------------------------------------------------------------------------- config, grid, weights


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tile=100), "multiple of the spatial factor 8"),
        (dict(tile=0), "positive multiple"),
        (dict(overlap=-0.1), r"in \[0, 1\)"),
        (dict(overlap=1.0), r"in \[0, 1\)"),
        (dict(tile=16, overlap=0.6), "grid step below the spatial factor"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TilingConfig(**kwargs).validate(8)


def test_config_stride():
    assert TilingConfig().validate().stride(8) == 192  # 256 px, 25 % overlap: 64 px shared
    assert TilingConfig(80, 0.3).stride(8) == 56  # 80 * 0.7 is 55.999... in floats
    assert TilingConfig(32, 0.0).stride(8) == 32


@pytest.mark.parametrize(
    "n, tile, stride", [(4, 4, 3), (3, 4, 3), (10, 4, 3), (9, 4, 3), (5, 4, 3), (9, 4, 1), (8, 4, 4)]
)
def test_tile_spans_cover_and_weights(n, tile, stride):
    spans = tile_spans(n, tile, stride)
    assert spans[0][0] == 0 and spans[-1][1] == n  # flush with both borders
    assert all(b - a == min(tile, n) for a, b in spans)
    assert all(a0 < a1 <= b0 for (a0, b0), (a1, _) in itertools.pairwise(spans))  # no gap
    for blend in (True, False):
        ws = span_weights(spans, blend)
        total = torch.zeros(n)
        depth = torch.zeros(n)
        for (a, b), w in zip(spans, ws, strict=True):
            total[a:b] += w
            depth[a:b] += 1
            assert w.min() >= 0
        assert ws[0][0] == 1 and ws[-1][-1] == 1  # image borders are not blended
        assert (total > 0).all()  # every pixel counts
        if not blend or depth.max() <= 2:  # two ramps over an overlap are complementary
            assert torch.allclose(total, torch.ones(n), atol=1e-6), total


@pytest.mark.parametrize(
    "size, cfg",
    [
        ((64, 40), TilingConfig(16, 0.5)),
        ((64, 40), TilingConfig(16, 0.5, blend=False)),
        ((72, 48), TilingConfig(32, 0.75)),  # up to 4 tiles deep: the normalisation does the work
        ((80, 32), TilingConfig(64, 0.25)),  # a flush last tile overlapping more than the nominal overlap
        ((48, 48), TilingConfig(16, 0.0)),
    ],
)
def test_tiling_a_vae_without_spatial_context_is_exact(size, cfg):
    torch.manual_seed(0)
    vae, x = PointwiseVAE(), torch.rand(2, 3, 3, *size) * 2 - 1
    ref, til = vae.encode(x), tiled_encode(vae, x, cfg)
    assert (til.mean - ref.mean).abs().max() < 1e-6 and (til.logvar - ref.logvar).abs().max() < 1e-6
    assert (tiled_decode(vae, ref.mean, cfg) - vae.decode(ref.mean)).abs().max() < 1e-6
    # constant latents stay constant: the blend weights sum to 1 on every pixel
    ones = tiled_decode(vae, torch.ones(1, 3, 2, size[0] // 8, size[1] // 8), cfg)
    assert torch.allclose(ones, torch.full_like(ones, 2.5), atol=1e-6)


# ----------------------------------------------------------------------------- the real (tiny) VAE


def test_untiled_fallback_is_identical(vae):
    torch.manual_seed(1)
    x = torch.rand(1, 3, 5, 32, 24) * 2 - 1  # no larger than one 32 px tile
    cfg = TilingConfig(32, 0.25)
    with torch.no_grad():
        ref, til = vae.encode(x), tiled_encode(vae, x, cfg)
        assert torch.equal(til.mean, ref.mean) and torch.equal(til.logvar, ref.logvar)
        assert torch.equal(tiled_decode(vae, ref.mean, cfg), vae.decode(ref.mean))
        post, states = tiled_encode_chunk(vae, x, None, cfg)
        assert torch.equal(post.mean, ref.mean) and list(states) == [(0, 0)]


def test_tiled_encoding_needs_aligned_frames(vae):
    with pytest.raises(ValueError, match="multiples of the spatial factor"):
        tiled_encode(vae, torch.zeros(1, 3, 1, 68, 32), TilingConfig(32, 0.25))


def test_streamed_tiled_equals_whole_tiled(vae):
    torch.manual_seed(2)
    x = torch.rand(1, 3, 13, 64, 48) * 2 - 1
    cfg = TilingConfig(32, 0.25)  # a 3 x 2 grid, the last tiles flush with the border
    with torch.no_grad():
        whole = tiled_encode(vae, x, cfg)
        means, logvars, states = [], [], None
        for chunk in split_frames(x, 1):  # 5, 4, 4 frames
            post, states = tiled_encode_chunk(vae, chunk, states, cfg)
            means.append(post.mean)
            logvars.append(post.logvar)
        assert sorted(states) == [(i, j) for i in range(3) for j in range(2)]
        assert (torch.cat(means, 2) - whole.mean).abs().max() <= 1e-5
        assert (torch.cat(logvars, 2) - whole.logvar).abs().max() <= 1e-5

        frames, out, states = tiled_decode(vae, whole.mean, cfg), [], {}
        for zc in whole.mean.split(2, dim=2):  # 2 + 2 latent frames -> 5 + 8 frames
            fc, states = tiled_decode_chunk(vae, zc, states, cfg)
            out.append(fc)
        assert (torch.cat(out, 2) - frames).abs().max() <= 1e-5

        with pytest.raises(ValueError, match="changed mid-stream"):  # another frame size, another grid
            tiled_decode_chunk(vae, whole.mean[:, :, 2:, :, :3], states, cfg)


def test_tiling_error_measured_and_blending_beats_naive_tiling(vae):
    """On a random (untrained) VAE tiles differ a lot from the whole frame: the receptive field and the mid
    attention span the frame. What blending owes is to do better than a hard seam on the same grid where
    tiles overlap: there it averages two tiles' partly independent errors and down-weights each tile near
    its own (context-starved) edge, and it removes the jump a hard seam leaves. (Held, with >= 9 % margins,
    for 12 of 12 seeds of VAE and clip tried.)"""
    x = shapes_video(64, 5)
    cfg, naive = TilingConfig(32, 0.5), TilingConfig(32, 0.5, blend=False)  # tiles [0,32) [16,48) [32,64)
    err = tiling_error(vae, x, cfg)
    print("\ntiled vs untiled, tiny random VAE, 64x64 shapes clip, tile 32, overlap 0.5:")
    print("  whole frame:", {k: round(v, 4) for k, v in err.items()})
    assert all(torch.isfinite(torch.tensor(v)) for v in err.values()) and err["decode_mean"] > 0

    overlap = torch.zeros(64, dtype=torch.bool)
    overlap[16:48] = True
    overlap = overlap[:, None] | overlap[None, :]  # (64, 64): pixels in two or more tiles
    with torch.no_grad():
        ref = vae.encode(x)
        frames = vae.decode(ref.mean)
        results = {}
        for name, c in (("blend", cfg), ("naive", naive)):
            mean, out = tiled_encode(vae, x, c).mean, tiled_decode(vae, ref.mean, c)
            assert mean.shape == ref.mean.shape and out.shape == frames.shape == x.shape
            lat_err = (mean - ref.mean).abs()[..., overlap[::8, ::8]].mean().item()
            pix_err = (out - frames).abs()[..., overlap].mean().item()
            # the change across the hard cuts (columns 23|24 and 39|40) beyond the untiled frame's own
            jump = (out.diff(dim=-1) - frames.diff(dim=-1))[..., [23, 39]].abs().mean().item()
            results[name] = (lat_err, pix_err, jump)
    for name, (lat_err, pix_err, jump) in results.items():
        print(f"  {name}: overlap mean |d| latent {lat_err:.4f}, pixels {pix_err:.4f}; seam jump {jump:.4f}")
    for blended, hard in zip(results["blend"], results["naive"], strict=True):
        assert blended < hard
