"""Reconstruction metrics for the video VAE: PSNR, SSIM and LPIPS, in plain torch.

Inputs are pairs of same-shape tensors, videos `(B, C, T, H, W)` or images `(B, C, H, W)`, either float in
[-1, 1] or uint8 in [0, 255]. Every metric returns one value per sample, shape `(B,)`; `video_metrics`
averages them over the batch. Clamp a decoder's output to [-1, 1] first: the metrics take values as they are.

- PSNR: from the MSE over all of a sample's elements (all frames together, not a mean of per-frame PSNRs).
- SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), per frame and channel, "valid"
  filtering (no padding), population (co)variances -- as skimage's `structural_similarity(...,
  gaussian_weights=True, use_sample_covariance=False)`; without the MATLAB code's automatic downsampling.
- LPIPS (VGG variant): needs pretrained weights that this package does not ship; see `LPIPS`.

`data_range` is None (uint8: [0, 255]; float: [-1, 1]), a number L (values in [0, L], as in skimage) or a
pair (lo, hi). PSNR only uses the width; SSIM also uses `lo`: its luminance term is not offset-invariant and
assumes non-negative intensities, so values are shifted by -lo first. Hence float [-1, 1] inputs score
the same as their uint8 versions -- but only with the default or (-1, 1): `data_range=2.0` would mean [0, 2].
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from longvideo.errors import UserError


def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise UserError(f"{what}: expected two torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise UserError(f"{what}: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise UserError(f"{what}: dtypes differ: {x.dtype} vs {y.dtype}")
    if x.ndim not in (4, 5):
        raise UserError(f"{what}: expected (B, C, H, W) or (B, C, T, H, W) tensors, got {tuple(x.shape)}")
    if not (x.dtype == torch.uint8 or x.dtype.is_floating_point):
        raise UserError(f"{what}: expected float or uint8 tensors, got {x.dtype}")
    if x.numel() == 0:
        raise UserError(f"{what}: empty tensors of shape {tuple(x.shape)}")


Range = float | tuple[float, float] | None


def _value_range(x: torch.Tensor, data_range: Range, what: str) -> tuple[float, float]:
    """(lo, width) of the values: None -> (0, 255) for uint8, (-1, 2) for float; L -> (0, L)."""
    if data_range is None:
        return (0.0, 255.0) if x.dtype == torch.uint8 else (-1.0, 2.0)
    pair = data_range if isinstance(data_range, tuple) else (0, data_range)
    if len(pair) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair):
        raise UserError(f"{what}: data_range must be a number or a (lo, hi) pair, not {data_range!r}")
    lo, hi = map(float, pair)
    if not hi > lo:
        raise UserError(f"{what}: data_range must be > 0 (or lo < hi), got {data_range!r}")
    return lo, hi - lo


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: Range = None) -> torch.Tensor:
    """Per-sample PSNR in dB, shape (B,): `10 log10(L^2 / MSE)` over all of a sample's elements.

    L, the width of the value range, defaults to 255 for uint8 and 2 for float (videos in [-1, 1]).
    Identical samples (MSE 0) give +inf, so a batch mean is +inf too; filter with `torch.isfinite`.
    """
    _check_pair(x, y, "psnr")
    _, dr = _value_range(x, data_range, "psnr")
    dt = _work_dtype(x)
    diff = x.to(dt) - y.to(dt)  # (B, ...)
    mse = diff.square().flatten(1).mean(1)  # (B,)
    return 10.0 * torch.log10(dr**2 / mse)  # mse == 0 -> +inf


def _gaussian_1d(win_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    r = torch.arange(win_size, dtype=dtype, device=device) - (win_size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return g / g.sum()  # (win_size,), sums to 1; the 2-D window is its outer product


def _filter_valid(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, "valid" (no padding), per channel: (N, C, H, W) -> (N, C, H-k+1, W-k+1)."""
    c, k = z.shape[1], g.numel()
    z = F.conv2d(z, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)  # along H
    return F.conv2d(z, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)  # along W


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: Range = None,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-sample SSIM (Wang et al. 2004), shape (B,): mean over channels, valid pixels and frames.

    Each frame and channel is filtered with a normalised `win_size` x `win_size` Gaussian (std `sigma`),
    without padding; C1 = (k1 L)^2, C2 = (k2 L)^2 with L the width of the value range (uint8: 255, float:
    2 for [-1, 1]); values are shifted to [0, L] first (see the module docstring). Identical inputs give 1.
    """
    _check_pair(x, y, "ssim")
    lo, dr = _value_range(x, data_range, "ssim")
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
        raise UserError(f"ssim: win_size must be a positive odd integer, got {win_size!r}")
    if not sigma > 0:
        raise UserError(f"ssim: sigma must be > 0, got {sigma}")
    h, w = x.shape[-2:]
    if h < win_size or w < win_size:
        raise UserError(f"ssim: frames of {h}x{w} are smaller than the {win_size}x{win_size} window")

    b = x.shape[0]
    if x.ndim == 5:  # (B, C, T, H, W) -> (B*T, C, H, W): frames folded into the batch
        x, y = (v.transpose(1, 2).flatten(0, 1) for v in (x, y))
    dt = _work_dtype(x)
    x, y = x.to(dt) - lo, y.to(dt) - lo  # (N, C, H, W), in [0, L]
    if isinstance(data_range, int | float) and min(x.min().item(), y.min().item()) < -0.25 * dr:
        # far below [0, L]: most likely [-1, 1] data given data_range=2.0, which would silently skew SSIM
        raise UserError(
            f"ssim: values far below 0 with data_range={data_range} (= [0, {data_range}]); "
            "for [-1, 1] data pass data_range=(-1, 1) or leave it None"
        )
    g = _gaussian_1d(win_size, sigma, dt, x.device)

    # Moments of the frame-centred values (less cancellation in E[x^2] - mu^2), in one filter pass over the
    # five maps stacked along channels: (N, 5C, H, W) -> (N, 5C, H', W').
    c = x.shape[1]
    x_mean, y_mean = x.mean((2, 3), keepdim=True), y.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
    x, y = x - x_mean, y - y_mean
    m = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), g)
    mu_x, mu_y, e_xx, e_yy, e_xy = m.split(c, dim=1)  # each (N, C, H', W'), centred
    var_x = e_xx - mu_x * mu_x  # population (co)variances under the Gaussian weights
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    mu_x, mu_y = mu_x + x_mean, mu_y + y_mean  # local means of the [0, L] values
    c1, c2 = (k1 * dr) ** 2, (k2 * dr) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return smap.flatten(1).mean(1).view(b, -1).mean(1)  # (N,) -> (B, T) -> (B,)


@torch.no_grad()
def video_metrics(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """{"psnr", "ssim"}: batch means for float videos `(B, C, T, H, W)` in [-1, 1] (data range 2)."""
    if not (isinstance(x, torch.Tensor) and x.dtype.is_floating_point and x.ndim == 5):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"video_metrics: expected float (B, C, T, H, W) videos in [-1, 1], got {got}")
    return {
        "psnr": psnr(x, y, data_range=(-1.0, 1.0)).mean().item(),
        "ssim": ssim(x, y, data_range=(-1.0, 1.0)).mean().item(),
    }


# --- LPIPS (VGG) ----------------------------------------------------------------------------------------

# torchvision VGG16 `features` up to relu5_3 (the last max-pool is not needed): ints are 3x3 conv widths,
# "M" a 2x2 max-pool. Module indices, hence state-dict keys, match torchvision's.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_LPIPS_HINT = (
    "LPIPS needs backbone weights: pass the path of a VGG16 state dict (safetensors) with torchvision's "
    "`features.*` keys plus the LPIPS heads `lin0..lin4.model.1.weight`"
)


class _Lin(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        # Same keys as the lpips package (`model.1.weight`); its dropout (index 0) is a no-op at eval.
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(c, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS-VGG distance (Zhang et al. 2018), per sample (B,), for float inputs in [-1, 1].

    `weights_path`: a safetensors file holding a torchvision VGG16 backbone (`features.{0,2,...,28}.*`)
    and the LPIPS linear heads (`lin{i}.model.1.weight`, shape (1, C_i, 1, 1)); other keys are ignored.
    Images `(B, 3, H, W)` or videos `(B, 3, T, H, W)` (averaged over frames). Parameters are frozen but
    the forward keeps gradients, so it also serves as a perceptual loss.
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weights_path: str | os.PathLike | None):
        super().__init__()
        if weights_path is None:
            raise UserError(_LPIPS_HINT)
        path = Path(weights_path)
        if not path.is_file():
            raise UserError(f"{_LPIPS_HINT}; no such file: {path}")
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
                c_in = v
        self.features = nn.Sequential(*layers)
        for i, c in enumerate(_LPIPS_CHANNELS):
            self.add_module(f"lin{i}", _Lin(c))
        shift, scale = torch.tensor([-0.030, -0.088, -0.188]), torch.tensor([0.458, 0.448, 0.450])
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)  # ImageNet statistics
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self._load(path)
        self.requires_grad_(False)
        self.eval()

    def _load(self, path: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise UserError(f"LPIPS: cannot read {path} as safetensors: {e}") from None
        want = self.state_dict()
        missing = [k for k in want if k not in sd]
        if missing:
            raise UserError(f"LPIPS: {path} lacks {len(missing)} keys, e.g. {missing[:3]}; {_LPIPS_HINT}")
        for k, v in want.items():
            if sd[k].shape != v.shape:
                raise UserError(f"LPIPS: {path}: {k} is {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
        self.load_state_dict({k: sd[k] for k in want})

    def _feats(self, z: torch.Tensor) -> list[torch.Tensor]:
        z = (z - self.shift) / self.scale  # (N, 3, H, W), ImageNet statistics
        out = []
        for i, layer in enumerate(self.features):
            z = layer(z)
            if i in _TAPS:  # unit-normalise channels: (N, C_i, H_i, W_i)
                out.append(z / (z.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y, "LPIPS")
        if not x.dtype.is_floating_point or x.shape[1] != 3:
            raise UserError(f"LPIPS: expected float RGB inputs in [-1, 1], got {x.dtype} {tuple(x.shape)}")
        b = x.shape[0]
        if x.ndim == 5:  # (B, 3, T, H, W) -> (B*T, 3, H, W)
            x, y = (v.transpose(1, 2).flatten(0, 1) for v in (x, y))
        x, y = x.to(self.shift.dtype), y.to(self.shift.dtype)
        d = 0
        for i, f in enumerate(self._feats(torch.cat([x, y]))):  # one pass over both: (2N, C_i, H_i, W_i)
            fx, fy = f.chunk(2)
            d = d + getattr(self, f"lin{i}").model((fx - fy).square()).mean((1, 2, 3))  # (N,)
        return d.view(b, -1).mean(1)  # (B,)
