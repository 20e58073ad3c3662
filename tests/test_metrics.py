"""PSNR / SSIM / LPIPS: hand-computed values, an independent numpy SSIM, and the input checks."""

import itertools
import math

import numpy as np
import pytest
import torch

from longvideo.errors import UserError
from longvideo.eval.metrics import LPIPS, psnr, ssim, video_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1  # uniform in [-1, 1]


def _noisy(x: torch.Tensor, std: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def _ssim_numpy(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 11, sigma: float = 1.5) -> float:
    """Plain SSIM of a (C, H, W) pair in [0, L]: an explicit 2-D Gaussian window, loops over positions."""
    r = np.arange(win) - (win - 1) / 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    w = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x, y = x.astype(np.float64), y.astype(np.float64)
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - win + 1):
            for j in range(x.shape[2] - win + 1):
                px, py = x[c, i : i + win, j : j + win], y[c, i : i + win, j : j + win]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


# --- PSNR -------------------------------------------------------------------------------------------------


def test_psnr_constant_offset():
    x = _rand(2, 3, 4, 8, 8).clamp(-0.5, 0.5)
    d = torch.tensor([0.1, 0.02]).view(2, 1, 1, 1, 1)  # MSE = d^2 per sample
    p = psnr(x, x + d)
    assert p.shape == (2,)
    expected = [10 * math.log10(4 / 0.1**2), 10 * math.log10(4 / 0.02**2)]  # 26.02 dB, 40.00 dB
    assert p.tolist() == pytest.approx(expected, abs=1e-3)
    assert psnr(x, x + d, data_range=1.0).tolist() == pytest.approx(
        [e - 20 * math.log10(2) for e in expected], abs=1e-3
    )


def test_psnr_identical_is_inf():
    x = _rand(2, 3, 8, 8)
    y = x.clone()
    y[1] += 0.1
    p = psnr(x, y)
    assert math.isinf(p[0].item()) and p[0] > 0
    assert math.isfinite(p[1].item())


def test_psnr_uint8_matches_float():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (2, 3, 3, 8, 8), generator=g, dtype=torch.uint8)
    b = torch.randint(0, 256, (2, 3, 3, 8, 8), generator=g, dtype=torch.uint8)
    to_f = lambda v: v.float() / 127.5 - 1  # noqa: E731
    assert psnr(a, b).tolist() == pytest.approx(psnr(to_f(a), to_f(b)).tolist(), abs=1e-4)
    # uint8 differences are exact: MSE = mean((a - b)^2) on ints
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    assert psnr(a, b).tolist() == pytest.approx((10 * torch.log10(255.0**2 / mse)).tolist(), abs=1e-4)


def test_psnr_video_is_from_total_mse():
    x = _rand(2, 3, 4, 8, 8)
    y = _noisy(x, 0.1 * torch.arange(1, 5).view(1, 1, 4, 1, 1))  # more noise on later frames
    per_frame = torch.stack([psnr(x[:, :, t], y[:, :, t]) for t in range(4)], 1)  # (B, T)
    mse = (4 / 10 ** (per_frame / 10)).mean(1)
    assert psnr(x, y).tolist() == pytest.approx((10 * torch.log10(4 / mse)).tolist(), abs=1e-4)


# --- SSIM -------------------------------------------------------------------------------------------------


def test_ssim_identical_symmetric_and_decreasing():
    x = _rand(2, 3, 2, 16, 16)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    y = _noisy(x, 0.2)
    assert ssim(x, y).tolist() == pytest.approx(ssim(y, x).tolist(), abs=1e-6)
    vals = [ssim(x, _noisy(x, s)).mean().item() for s in (0.02, 0.1, 0.3, 1.0)]
    assert all(a > b for a, b in itertools.pairwise(vals)), vals
    assert vals[0] < 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_matches_numpy_reference(dtype):
    x = _rand(2, 3, 14, 15, seed=3)
    y = _noisy(x, 0.3, seed=4)
    got = ssim(x.to(dtype), y.to(dtype))
    ref = [_ssim_numpy(x[b].numpy() + 1, y[b].numpy() + 1, 2.0) for b in range(2)]  # [-1, 1] -> [0, 2]
    assert got.tolist() == pytest.approx(ref, abs=1e-5)
    # a smoother image (less local variance, where float32 cancellation would show first)
    xs = torch.nn.functional.avg_pool2d(_rand(1, 1, 28, 30, seed=5), 2) * 0.2 + 0.5
    ys = xs + 0.01 * _rand(1, 1, 14, 15, seed=6)
    assert ssim(xs.to(dtype), ys.to(dtype)).item() == pytest.approx(
        _ssim_numpy(xs[0].numpy() + 1, ys[0].numpy() + 1, 2.0), abs=1e-5
    )


def test_ssim_uint8_matches_numpy_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (1, 3, 12, 13), generator=g, dtype=torch.uint8)
    b = (a.int() + torch.randint(-40, 41, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    ref = _ssim_numpy(a[0].numpy(), b[0].numpy(), 255.0)
    assert ssim(a, b).item() == pytest.approx(ref, abs=1e-5)
    # float [-1, 1] versions score the same (shifted to [0, 2]; SSIM is scale-invariant, not offset-invariant)
    fa, fb = a.double() / 127.5 - 1, b.double() / 127.5 - 1
    assert ssim(fa, fb).item() == pytest.approx(ref, abs=1e-5)
    assert ssim(fa, fb, data_range=(-1, 1)).item() == pytest.approx(ref, abs=1e-5)
    assert ssim((fa + 1) / 2, (fb + 1) / 2, data_range=1.0).item() == pytest.approx(ref, abs=1e-5)
    assert abs(_ssim_numpy(fa[0].numpy(), fb[0].numpy(), 2.0) - ref) > 0.05  # unshifted would differ
    with pytest.raises(UserError, match=r"data_range=\(-1, 1\)"):
        ssim(fa, fb, data_range=2.0)  # means [0, 2]: refused on [-1, 1] data


def test_ssim_brightness_shift_on_constant_image_is_luminance_term():
    a, c = -0.6, 0.5  # in [-1, 1]; SSIM sees intensities shifted to [0, 2]: mu_x = a + 1, mu_y = a + 1 + c
    x = torch.full((1, 3, 13, 13), a, dtype=torch.float64)
    c1 = (0.01 * 2) ** 2  # zero (co)variances: the contrast-structure term is C2 / C2 = 1
    mx, my = a + 1, a + 1 + c
    expected = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    assert ssim(x, x + c).item() == pytest.approx(expected, abs=1e-12)
    assert expected < 0.9  # a real drop, not a trivially-1 check
    u = torch.full((1, 1, 11, 11), 40, dtype=torch.uint8)  # the same on uint8, L = 255
    c1 = (0.01 * 255) ** 2
    assert ssim(u, u + 60).item() == pytest.approx((2 * 40 * 100 + c1) / (40**2 + 100**2 + c1), abs=1e-6)


def test_ssim_video_is_mean_of_frames():
    x = _rand(2, 3, 5, 12, 14)
    y = _noisy(x, 0.1 * torch.arange(1, 6).view(1, 1, 5, 1, 1))
    frames = torch.stack([ssim(x[:, :, t], y[:, :, t]) for t in range(5)], 1)  # (B, T)
    assert ssim(x, y).tolist() == pytest.approx(frames.mean(1).tolist(), abs=1e-6)
    assert frames[:, 0].gt(frames[:, -1]).all()


def test_video_metrics():
    x = _rand(2, 3, 3, 16, 16)
    y = _noisy(x, 0.1)
    m = video_metrics(x, y)
    assert set(m) == {"psnr", "ssim"} and all(isinstance(v, float) for v in m.values())
    assert m["psnr"] == pytest.approx(psnr(x, y).mean().item())
    assert m["ssim"] == pytest.approx(ssim(x, y).mean().item())
    with pytest.raises(UserError):
        video_metrics(x[:, :, 0], y[:, :, 0])  # images, not videos


@pytest.mark.parametrize(
    ("fn", "x", "y", "kwargs"),
    [
        (psnr, torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9), {}),  # shape mismatch
        (ssim, torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 17), {}),
        (psnr, torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8, dtype=torch.uint8), {}),  # dtype mismatch
        (psnr, torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), {}),  # no batch dimension
        (psnr, torch.zeros(2, 3, 8, 8, dtype=torch.int32), torch.zeros(2, 3, 8, 8, dtype=torch.int32), {}),
        (psnr, torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), {"data_range": 0.0}),
        (ssim, torch.zeros(2, 3, 10, 32), torch.zeros(2, 3, 10, 32), {}),  # frames below 11x11
        (ssim, torch.zeros(1, 3, 2, 32, 8), torch.zeros(1, 3, 2, 32, 8), {}),
        (ssim, torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16), {"win_size": 4}),
        (ssim, torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16), {"data_range": (1.0, -1.0)}),
        (psnr, torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), {"data_range": "2"}),
    ],
)
def test_bad_input_raises_user_error(fn, x, y, kwargs):
    with pytest.raises(UserError) as e:
        fn(x, y, **kwargs)
    assert "\n" not in str(e.value)


# --- LPIPS ------------------------------------------------------------------------------------------------


def _lpips_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd, c_in, i = {}, 3, 0
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = torch.randn(v, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
        sd[f"features.{i}.bias"] = torch.zeros(v)
        c_in, i = v, i + 2
    for k, c in enumerate((64, 128, 256, 512, 512)):
        sd[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1, generator=g) / c  # non-negative, as trained
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # extra keys (a full torchvision VGG16) are ignored
    return sd


def test_lpips_random_weights(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lpips_vgg.safetensors"
    save_file(_lpips_state_dict(), str(path))
    lp = LPIPS(str(path))
    assert "features.28.weight" in lp.state_dict() and "lin4.model.1.weight" in lp.state_dict()
    x = _rand(2, 3, 16, 16)  # the smallest size that reaches relu5_3 (1x1 after four max-pools)
    y = _noisy(x, 0.3)
    d = lp(x, y)
    assert d.shape == (2,) and (d >= 0).all() and (d > 0).all()
    assert lp(x, x).abs().max().item() < 1e-6
    v = torch.stack([x, y], 2)  # (B, 3, T=2, H, W): frame 0 identical, frame 1 differs
    assert lp(v, torch.stack([x, x], 2)).tolist() == pytest.approx((d / 2).tolist(), rel=1e-4)
    with pytest.raises(UserError):
        lp(x[:, :2], y[:, :2])  # not RGB


def test_lpips_needs_weights(tmp_path):
    from safetensors.torch import save_file

    for bad in (None, tmp_path / "missing.safetensors"):
        with pytest.raises(UserError, match="LPIPS needs backbone weights: pass the path of a VGG16"):
            LPIPS(bad)
    sd = _lpips_state_dict()
    del sd["lin2.model.1.weight"]
    save_file(sd, str(tmp_path / "partial.safetensors"))
    with pytest.raises(UserError, match=r"lacks 1 keys.*lin2\.model\.1\.weight"):
        LPIPS(tmp_path / "partial.safetensors")
    sd = _lpips_state_dict()
    sd["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    save_file(sd, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(UserError, match="lin0"):
        LPIPS(tmp_path / "wrong.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError):
        LPIPS(tmp_path / "junk.safetensors")
