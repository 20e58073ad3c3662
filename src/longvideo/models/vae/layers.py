"""Building blocks of the causal video VAE, and the explicit streaming state they share.

Every temporal operation is causal (a frame sees only itself and the past) and every normalisation works
per frame, so a video processed in temporal chunks gives exactly the whole-video result: each causal conv
keeps the part of its (padded) input that its next window still needs, the *tail*, in a `StreamState`
that the caller passes in and gets back. Nothing is stored on the modules.

Some options exist only to load the seeds' VAEs exactly, and break that: GroupNorm over time
(`Norm(over_time=True)`) and trilinear time up-sampling (`Upsample(kind="spacetime_trilinear")`) for
Open-Sora-Plan v1.2; zero time padding on both sides (`CausalConv3d(time_pad="centered_zeros")`), attention
over all frames (`FrameAttention(span_time=True)`) and linear time up-sampling after the conv
(`Upsample(kind="spacetime_conv_linear")`) for EasyAnimate's Slice VAE. All of them refuse a `StreamState`.

Layout everywhere: (B, C, T, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------- streaming state


class StreamState:
    """Causal context between temporal chunks: module key -> the input tail its next window needs.

    Functional: a chunk reads the previous state and writes a new one (`advance()` returns it), so the old
    state stays valid (a chunk can be re-run). `None` instead of a state means "whole video, keep nothing".
    """

    def __init__(self, tails: dict[str, Tensor] | None = None):
        self._prev = dict(tails or {})
        self._next: dict[str, Tensor] = {}

    def read(self, key: str) -> Tensor | None:
        return self._prev.get(key)

    def write(self, key: str, tail: Tensor) -> None:
        self._next[key] = tail

    def fork(self) -> StreamState:
        """A state that reads these tails and collects new ones, leaving this one untouched."""
        return StreamState(self._prev)

    def advance(self) -> StreamState:
        """The state for the next chunk: the tails written during this one."""
        return StreamState(self._next)

    @property
    def started(self) -> bool:
        """True once a chunk has gone through (the next one does not start the video)."""
        return bool(self._prev)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._prev.values())


def assign_stream_keys(root: nn.Module) -> None:
    """Give every stateful layer a unique key (its module path): static naming, not state."""
    for name, m in root.named_modules():
        if isinstance(m, (CausalConv3d, TimeUpsample)):
            m.key = name


# ----------------------------------------------------------------------------- per-frame helpers


def to_frames(x: Tensor) -> Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def from_frames(x: Tensor, b: int) -> Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W)."""
    bt, c, h, w = x.shape
    return x.view(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)


class FrameConv2d(nn.Conv2d):
    """A 2D convolution applied to every frame of a video independently."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, stride: int = 1, pad: tuple[int, ...] | None = None
    ):
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if pad is None else 0)
        self.pad = (
            pad  # explicit (left, right, top, bottom) zero padding, e.g. (0, 1, 0, 1) for stride-2 down
        )

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:  # (B, C, T, H, W)
        y = to_frames(x)
        if self.pad is not None:
            y = F.pad(y, self.pad)
        return from_frames(super().forward(y), x.shape[0])


class Norm(nn.Module):
    """GroupNorm per frame (streamable), or over (T, H, W) together as Open-Sora-Plan v1.2 does.

    `groups=0` is an RMS norm over the channels of each pixel (Wan 2.1's VAE): no statistic spans space or
    time, so a flat frame keeps its level (a GroupNorm subtracts each group's spatial mean: the colour of a
    flat background must then hide in ratios between channels), and it streams exactly. Our recipes keep
    GroupNorm, which fits the shapes world better (the one-batch VAE probe in BENCHMARKS.md).
    """

    def __init__(self, channels: int, groups: int, over_time: bool = False):
        super().__init__()
        if groups == 0:
            self.norm = ChannelRMSNorm(channels)
        else:
            self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.over_time = over_time and groups != 0

    @property
    def weight(self) -> Tensor:
        return self.norm.weight

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        if isinstance(self.norm, ChannelRMSNorm):
            return self.norm(x)  # per pixel: any layout, any chunking
        if self.over_time:
            if state is not None:
                raise ValueError("GroupNorm over time (norm_over_time=True) cannot be streamed exactly")
            return self.norm(x)  # statistics span all frames: chunking would change them
        return from_frames(self.norm(to_frames(x)), x.shape[0])


class ChannelRMSNorm(nn.Module):
    """x / rms over dim 1 (channels) * weight + bias, for (B, C, ...) tensors."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        x = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


# ----------------------------------------------------------------------------- causal temporal layers


# how a CausalConv3d pads time
TIME_PADDINGS = {
    "causal": "k_t - 1 copies of the first frame on the past side, nothing on the future side (streamable)",
    # EasyAnimate's CausalConv3d in its Slice-VAE modes (padding_flag 1/2): needed to load that VAE exactly;
    # looks (k_t - 1) // 2 frames ahead, so it cannot stream
    "centered_zeros": "(k_t - 1) // 2 zero frames on each side, a 'same' conv in time. Not streamable",
}


class CausalConv3d(nn.Module):
    """Conv3d, causal in time: the past side is padded by repeating the first frame, the future never seen.

    Streaming: concatenate the previous tail, run every full window, keep the unconsumed rest as the new
    tail. This is exact for any chunk split and any temporal stride. (`time_pad="centered_zeros"` instead
    pads both sides with zeros, as EasyAnimate's Slice VAE does; it is not causal and refuses a state.)
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple = 3,
        stride: int | tuple = 1,
        pad: tuple[int, ...] | None = None,
        time_pad: str = "causal",
    ):
        super().__init__()
        if time_pad not in TIME_PADDINGS:
            kinds = ", ".join(TIME_PADDINGS)
            raise ValueError(f"unknown time padding {time_pad!r} (expected one of {kinds})")
        k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        s = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.kt, self.st = k[0], s[0]
        spatial = (0, k[1] // 2, k[2] // 2) if pad is None else (0, 0, 0)
        self.conv = nn.Conv3d(cin, cout, k, s, padding=spatial)
        self.pad = pad  # explicit spatial (left, right, top, bottom) padding, e.g. (0, 1, 0, 1)
        self.time_pad = time_pad
        self.key = ""

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:  # (B, C, T, H, W)
        if self.time_pad == "centered_zeros":
            return self._centered(x, state)
        prev = state.read(self.key) if state is not None else None
        if prev is None:  # start of the video: the past is the first frame, repeated
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1), x], dim=2)
        else:
            x = torch.cat([prev, x], dim=2)
        n = (x.shape[2] - self.kt) // self.st + 1 if x.shape[2] >= self.kt else 0  # full windows
        if state is not None:
            state.write(self.key, x[:, :, n * self.st :])  # where the next window starts
        if n == 0:
            raise ValueError(
                f"chunk too short for a temporal stride of {self.st}: align chunks to the stride"
            )
        x = x[:, :, : (n - 1) * self.st + self.kt]
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.conv(x)

    def _centered(self, x: Tensor, state: StreamState | None) -> Tensor:
        if state is not None:
            raise ValueError(
                "zero time padding on both sides (time_padding='centered_zeros') looks ahead and cannot be "
                "streamed exactly"
            )
        p = (self.kt - 1) // 2
        x = F.pad(x, (0, 0, 0, 0, p, p))  # zeros before and after the clip
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.conv(x)


class TimeUpsample(nn.Module):
    """x2 in time, causally: the video's first frame stays one frame, every later frame becomes two.

    (Open-Sora-Plan interpolates trilinearly, which looks one frame ahead and so cannot stream exactly;
    repeating frames and letting the following causal conv tell the copies apart keeps causality.)
    """

    def __init__(self):
        super().__init__()
        self.key = ""

    def forward(
        self, x: Tensor, state: StreamState | None = None, starts_video: bool = True
    ) -> Tensor:  # (B, C, T, H, W); without a state, `starts_video` says whether x holds the first frame
        first = starts_video if state is None else state.read(self.key) is None
        if state is not None:
            state.write(self.key, x.new_zeros(0))  # marker: the video has started
        x = x.repeat_interleave(2, dim=2)
        return x[:, :, 1:] if first else x


# ----------------------------------------------------------------------------- blocks


def make_conv(kind: str, cin: int, cout: int, kernel: int = 3, time_pad: str = "causal") -> nn.Module:
    """ "2d": per-frame conv; "3d": conv over time too, padded in time as `time_pad` says."""
    if kind == "2d":
        return FrameConv2d(cin, cout, kernel)
    if kind == "3d":
        return CausalConv3d(cin, cout, kernel, time_pad=time_pad)
    raise ValueError(f"unknown conv kind {kind!r} (expected '2d' or '3d')")


class ResBlock(nn.Module):
    """norm -> SiLU -> conv -> norm -> SiLU -> dropout -> conv, plus a (1x1) shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kind: str,
        groups: int,
        dropout: float = 0.0,
        over_time: bool = False,
        time_pad: str = "causal",
    ):
        super().__init__()
        self.norm1 = Norm(cin, groups, over_time)
        self.conv1 = make_conv(kind, cin, cout, time_pad=time_pad)
        self.norm2 = Norm(cout, groups, over_time)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = make_conv(kind, cout, cout, time_pad=time_pad)
        self.nin_shortcut = make_conv(kind, cin, cout, kernel=1, time_pad=time_pad) if cin != cout else None

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x, state)), state)
        h = self.conv2(self.dropout(F.silu(self.norm2(h, state))), state)
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x, state)
        return skip + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (never across frames).

    `span_time=True` attends over all pixels of all frames of the clip at once, and normalises over them
    (EasyAnimate's `Attention3D`, its "3d" mid attention): every frame sees the future, so it cannot stream.
    """

    def __init__(self, channels: int, groups: int, over_time: bool = False, span_time: bool = False):
        super().__init__()
        self.norm = Norm(channels, groups, over_time or span_time)
        self.q = FrameConv2d(channels, channels, 1)
        self.k = FrameConv2d(channels, channels, 1)
        self.v = FrameConv2d(channels, channels, 1)
        self.proj_out = FrameConv2d(channels, channels, 1)
        self.span_time = span_time

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        b, c, t, h, w = x.shape
        if self.span_time:
            return self._over_clip(x, state)
        y = self.norm(x, state)

        def tokens(z: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B*T, 1, H*W, C)
            return to_frames(z).flatten(2).transpose(1, 2).unsqueeze(1)

        o = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        o = o.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        return x + self.proj_out(from_frames(o, b))

    def _over_clip(self, x: Tensor, state: StreamState | None) -> Tensor:
        if state is not None:
            raise ValueError(
                "attention over all frames (mid_attention_over_time=True) sees the future and cannot be "
                "streamed exactly"
            )
        y = self.norm(x)

        def tokens(z: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, 1, T*H*W, C)
            return z.flatten(2).transpose(1, 2).unsqueeze(1)

        o = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        return x + self.proj_out(o.squeeze(1).transpose(1, 2).reshape(x.shape))


# x2 down-sampler kinds (each conv pads right and bottom by one pixel)
DOWNSAMPLE_KINDS = {
    "spatial": "x2 in space: a per-frame 3x3 conv, stride 2",
    "spacetime": "x2 in space and time: a 3x3x3 conv over time, stride (2, 2, 2)",
    # EasyAnimate's SpatialDownsampler3D: its space-only down-sampler still mixes 3 frames
    "spatial_3d": "x2 in space: a 3x3x3 conv over time, stride (1, 2, 2)",
}


class Downsample(nn.Module):
    """x2 down in space or in space and time: see `DOWNSAMPLE_KINDS`. Time padding: `CausalConv3d`."""

    def __init__(self, channels: int, kind: str, time_pad: str = "causal"):
        super().__init__()
        if kind == "spatial":
            self.conv = FrameConv2d(channels, channels, 3, stride=2, pad=(0, 1, 0, 1))
        elif kind in ("spacetime", "spatial_3d"):
            stride = 2 if kind == "spacetime" else (1, 2, 2)
            self.conv = CausalConv3d(channels, channels, 3, stride, pad=(0, 1, 0, 1), time_pad=time_pad)
        else:
            raise ValueError(f"unknown downsample {kind!r} (expected one of {', '.join(DOWNSAMPLE_KINDS)})")

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        return self.conv(x, state)


# x2 up-sampler kinds: how the time axis and the pixels are interpolated around the conv
UPSAMPLE_KINDS = {
    "spatial": "x2 in space (nearest), then a per-frame 3x3 conv",
    "spacetime": "x2 in space (nearest) and causally in time (TimeUpsample), then a causal 3x3x3 conv",
    # Open-Sora-Plan v1.2's Spatial2xTime2x3DUpsample: needed to load its decoders exactly; looks one
    # frame ahead in time, so it cannot stream
    "spacetime_trilinear": "frame 0: x2 bilinear in space; frames 1..: x2 trilinear in space and time "
    "(half-pixel centres, edge-clamped); then a causal 3x3x3 conv. Not streamable",
    # EasyAnimate's SpatialUpsampler3D: its space-only up-sampler's conv still mixes 3 frames
    "spatial_3d": "x2 in space (nearest), then a 3x3x3 conv over time",
    # EasyAnimate's SpatialTemporalUpsampler3D: it doubles time *after* its conv, by interpolation that
    # looks one frame ahead, so it cannot stream
    "spacetime_conv_linear": "x2 in space (nearest), a 3x3x3 conv over time, then x2 in time by linear "
    "interpolation (half-pixel centres, edge-clamped; the video's first frame stays one). Not streamable",
}
TIME_UPSAMPLE_KINDS = ("spacetime", "spacetime_trilinear", "spacetime_conv_linear")


def first_frame_trilinear_up(x: Tensor, starts_video: bool = True) -> Tensor:
    """(B, C, T, H, W) -> (B, C, 2T-1, 2H, 2W): the first frame x2 in space only, the others x2 trilinear.

    A clip that does not start the video has no such first frame: all of it goes x2 trilinear (2T frames).
    """
    if not starts_video:
        return F.interpolate(x, scale_factor=(2, 2, 2), mode="trilinear")
    first = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2), mode="trilinear")
    if x.shape[2] == 1:
        return first
    rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 2, 2), mode="trilinear")
    return torch.cat([first, rest], dim=2)


def first_frame_linear_time_up(x: Tensor, starts_video: bool = True) -> Tensor:
    """(B, C, T, H, W) -> (B, C, 2T-1, H, W): the first frame kept, the others x2 in time by linear
    interpolation among themselves; a clip that does not start the video goes x2 as a whole (2T frames)."""
    if not starts_video:
        return F.interpolate(x, scale_factor=(2, 1, 1), mode="trilinear")
    if x.shape[2] == 1:
        return x
    rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 1, 1), mode="trilinear")
    return torch.cat([x[:, :, :1], rest], dim=2)


class Upsample(nn.Module):
    """x2 up in space, or in space and time, around a conv: see `UPSAMPLE_KINDS`.

    Without a `StreamState`, `starts_video` says whether the clip holds the video's first frame (which every
    time up-sampler keeps as one frame); with one, the state knows.
    """

    def __init__(self, channels: int, kind: str, time_pad: str = "causal"):
        super().__init__()
        if kind not in UPSAMPLE_KINDS:
            raise ValueError(f"unknown upsample {kind!r} (expected one of {', '.join(UPSAMPLE_KINDS)})")
        self.kind = kind
        self.time = TimeUpsample() if kind == "spacetime" else None
        self.conv = make_conv("2d" if kind == "spatial" else "3d", channels, channels, time_pad=time_pad)

    def forward(self, x: Tensor, state: StreamState | None = None, starts_video: bool = True) -> Tensor:
        if self.kind in ("spacetime_trilinear", "spacetime_conv_linear") and state is not None:
            raise ValueError(
                f"time up-sampling by interpolation (up={self.kind!r}) looks one frame ahead and "
                "cannot be streamed exactly"
            )
        if self.kind == "spacetime_trilinear":
            return self.conv(first_frame_trilinear_up(x, starts_video), state)
        b = x.shape[0]
        x = from_frames(F.interpolate(to_frames(x), scale_factor=2.0, mode="nearest"), b)
        if self.time is not None:
            x = self.time(x, state, starts_video)
        x = self.conv(x, state)
        if self.kind == "spacetime_conv_linear":
            x = first_frame_linear_time_up(x, starts_video)
        return x
