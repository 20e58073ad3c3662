"""Building blocks of the causal video VAE, and the explicit streaming state they share.

Every temporal operation is causal (a frame sees only itself and the past) and every normalisation works
per frame, so a video processed in temporal chunks gives exactly the whole-video result: each causal conv
keeps the part of its (padded) input that its next window still needs, the *tail*, in a `StreamState`
that the caller passes in and gets back. Nothing is stored on the modules.

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
    """GroupNorm per frame (streamable), or over (T, H, W) together as Open-Sora-Plan v1.2 does."""

    def __init__(self, channels: int, groups: int, over_time: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.over_time = over_time

    @property
    def weight(self) -> Tensor:
        return self.norm.weight

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        if self.over_time:
            if state is not None:
                raise ValueError("GroupNorm over time (norm_over_time=True) cannot be streamed exactly")
            return self.norm(x)  # statistics span all frames: chunking would change them
        return from_frames(self.norm(to_frames(x)), x.shape[0])


# ----------------------------------------------------------------------------- causal temporal layers


class CausalConv3d(nn.Module):
    """Conv3d, causal in time: the past side is padded by repeating the first frame, the future never seen.

    Streaming: concatenate the previous tail, run every full window, keep the unconsumed rest as the new
    tail. This is exact for any chunk split and any temporal stride.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple = 3,
        stride: int | tuple = 1,
        pad: tuple[int, ...] | None = None,
    ):
        super().__init__()
        k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        s = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.kt, self.st = k[0], s[0]
        spatial = (0, k[1] // 2, k[2] // 2) if pad is None else (0, 0, 0)
        self.conv = nn.Conv3d(cin, cout, k, s, padding=spatial)
        self.pad = pad  # explicit spatial (left, right, top, bottom) padding, e.g. (0, 1, 0, 1)
        self.key = ""

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:  # (B, C, T, H, W)
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


class TimeUpsample(nn.Module):
    """x2 in time, causally: the video's first frame stays one frame, every later frame becomes two.

    (Open-Sora-Plan interpolates trilinearly, which looks one frame ahead and so cannot stream exactly;
    repeating frames and letting the following causal conv tell the copies apart keeps causality.)
    """

    def __init__(self):
        super().__init__()
        self.key = ""

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:  # (B, C, T, H, W)
        first = state is None or state.read(self.key) is None
        if state is not None:
            state.write(self.key, x.new_zeros(0))  # marker: the video has started
        x = x.repeat_interleave(2, dim=2)
        return x[:, :, 1:] if first else x


# ----------------------------------------------------------------------------- blocks


def make_conv(kind: str, cin: int, cout: int, kernel: int = 3) -> nn.Module:
    """ "2d": per-frame conv; "3d": causal conv."""
    if kind == "2d":
        return FrameConv2d(cin, cout, kernel)
    if kind == "3d":
        return CausalConv3d(cin, cout, kernel)
    raise ValueError(f"unknown conv kind {kind!r} (expected '2d' or '3d')")


class ResBlock(nn.Module):
    """norm -> SiLU -> conv -> norm -> SiLU -> dropout -> conv, plus a (1x1) shortcut."""

    def __init__(
        self, cin: int, cout: int, kind: str, groups: int, dropout: float = 0.0, over_time: bool = False
    ):
        super().__init__()
        self.norm1 = Norm(cin, groups, over_time)
        self.conv1 = make_conv(kind, cin, cout)
        self.norm2 = Norm(cout, groups, over_time)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = make_conv(kind, cout, cout)
        self.nin_shortcut = make_conv(kind, cin, cout, kernel=1) if cin != cout else None

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x, state)), state)
        h = self.conv2(self.dropout(F.silu(self.norm2(h, state))), state)
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x, state)
        return skip + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (never across frames)."""

    def __init__(self, channels: int, groups: int, over_time: bool = False):
        super().__init__()
        self.norm = Norm(channels, groups, over_time)
        self.q = FrameConv2d(channels, channels, 1)
        self.k = FrameConv2d(channels, channels, 1)
        self.v = FrameConv2d(channels, channels, 1)
        self.proj_out = FrameConv2d(channels, channels, 1)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x, state)

        def tokens(z: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B*T, 1, H*W, C)
            return to_frames(z).flatten(2).transpose(1, 2).unsqueeze(1)

        o = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        o = o.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        return x + self.proj_out(from_frames(o, b))


class Downsample(nn.Module):
    """x2 down in space ("spatial", per frame) or in space and time ("spacetime", causal, stride 2,2,2)."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        if kind == "spatial":
            self.conv = FrameConv2d(channels, channels, 3, stride=2, pad=(0, 1, 0, 1))
        elif kind == "spacetime":
            self.conv = CausalConv3d(channels, channels, 3, stride=2, pad=(0, 1, 0, 1))
        else:
            raise ValueError(f"unknown downsample {kind!r}")

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        return self.conv(x, state)


class Upsample(nn.Module):
    """x2 up in space (nearest, per frame) or in space and causally in time, then a conv."""

    def __init__(self, channels: int, kind: str):
        super().__init__()
        if kind not in ("spatial", "spacetime"):
            raise ValueError(f"unknown upsample {kind!r}")
        self.time = TimeUpsample() if kind == "spacetime" else None
        self.conv = make_conv("3d" if kind == "spacetime" else "2d", channels, channels)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        b = x.shape[0]
        x = from_frames(F.interpolate(to_frames(x), scale_factor=2.0, mode="nearest"), b)
        if self.time is not None:
            x = self.time(x, state)
        return self.conv(x, state)
