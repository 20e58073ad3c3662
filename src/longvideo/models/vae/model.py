"""The causal video VAE: 4x8x8 compression (T = 4k+1 frames -> k+1 latent frames), KL posterior, and
exact streaming in temporal chunks at constant memory.

Structure follows Open-Sora-Plan v1.2's CausalVideoVAE (levels of ResNet blocks, joint space-time stride
2,2,2 down-sampling, per-frame mid attention) with two changes that make chunked processing exact: norms
never mix frames, and temporal up-sampling is causal (`TimeUpsample`). Both are config switches, so the
seeds' own layouts stay expressible (`norm_over_time=True` is OSP's GroupNorm; it refuses to stream).

Streaming subsumes EasyAnimate's Slice VAE: its decoder "feature sharing" concatenates neighbouring latent
chunks so that each slice's convolutions see context; here every causal conv carries the exact context it
needs (its input tail) from the previous chunk in a `StreamState`, so slices join seamlessly, with only past
context, at the cost of a few frames of features per layer.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longvideo.models.vae.layers import (
    CausalConv3d,
    Downsample,
    FrameAttention,
    Norm,
    ResBlock,
    StreamState,
    Upsample,
    assign_stream_keys,
    make_conv,
)


@dataclass
class VAEConfig:
    in_channels: int = 3
    latent_channels: int = 4
    base_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    encoder_conv_in: str = "3d"  # "2d" (per frame, OSP v1.2) or "3d" (causal)
    encoder_blocks: list[str] = field(default_factory=lambda: ["3d", "3d", "3d", "3d"])  # per level
    decoder_blocks: list[str] = field(default_factory=lambda: ["3d", "3d", "3d", "3d"])
    down: list[str] = field(
        default_factory=lambda: ["spatial", "spacetime", "spacetime", ""]
    )  # after level i
    up: list[str] = field(default_factory=lambda: ["", "spatial", "spacetime", "spacetime"])  # after level i
    mid_attention: bool = True
    norm_groups: int = 32
    norm_over_time: bool = False  # OSP v1.2: GroupNorm statistics over all frames (not streamable)
    dropout: float = 0.0
    scaling_factor: float = 1.0  # latents for the DiT: (z - shift) * scale
    shift_factor: float = 0.0

    def validate(self) -> VAEConfig:
        n = len(self.channel_mult)
        for name in ("encoder_blocks", "decoder_blocks", "down", "up"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs one entry per level ({n})")
        if self.down.count("spacetime") != self.up.count("spacetime"):
            raise ValueError("as many space-time down- as up-samplers")
        for c in (self.base_channels * m for m in self.channel_mult):
            if c % self.norm_groups:
                raise ValueError(f"channels {c} not divisible by norm_groups {self.norm_groups}")
        return self

    @property
    def temporal_factor(self) -> int:
        return 2 ** self.down.count("spacetime")

    @property
    def spatial_factor(self) -> int:
        return 2 ** sum(1 for d in self.down if d)


# ----------------------------------------------------------------------------- encoder / decoder


class _Level(nn.Module):
    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample = resample


class _Mid(nn.Module):
    def __init__(self, ch: int, cfg: VAEConfig):
        super().__init__()
        g, t = cfg.norm_groups, cfg.norm_over_time
        self.block_1 = ResBlock(ch, ch, "3d", g, cfg.dropout, t)
        self.attn_1 = FrameAttention(ch, g, t) if cfg.mid_attention else None
        self.block_2 = ResBlock(ch, ch, "3d", g, cfg.dropout, t)

    def forward(self, x: Tensor, state: StreamState | None) -> Tensor:
        x = self.block_1(x, state)
        if self.attn_1 is not None:
            x = self.attn_1(x, state)
        return self.block_2(x, state)


class Encoder(nn.Module):
    """(B, 3, 4k+1, H, W) -> (B, 2*latent, k+1, H/8, W/8): mean and log-variance."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mult]
        g, t = cfg.norm_groups, cfg.norm_over_time
        self.conv_in = make_conv(cfg.encoder_conv_in, cfg.in_channels, chs[0])
        levels, cin = [], chs[0]
        for i, cout in enumerate(chs):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, cout, cfg.encoder_blocks[i], g, cfg.dropout, t))
                cin = cout
            levels.append(_Level(blocks, Downsample(cout, cfg.down[i]) if cfg.down[i] else None))
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(cin, cfg)
        self.norm_out = Norm(cin, g, t)
        self.conv_out = CausalConv3d(cin, 2 * cfg.latent_channels, 3)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.conv_in(x, state)
        for level in self.down:
            for block in level.block:
                h = block(h, state)
            if level.resample is not None:
                h = level.resample(h, state)
        h = self.mid(h, state)
        return self.conv_out(F.silu(self.norm_out(h, state)), state)


class Decoder(nn.Module):
    """(B, latent, k+1, h, w) -> (B, 3, 4k+1, 8h, 8w)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mult]
        g, t = cfg.norm_groups, cfg.norm_over_time
        cin = chs[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, cin, 3)
        self.mid = _Mid(cin, cfg)
        levels: list[_Level] = [None] * len(chs)  # type: ignore[list-item]
        for i in reversed(range(len(chs))):  # deepest level first, stored at its index (OSP's `up.{i}`)
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(cin, chs[i], cfg.decoder_blocks[i], g, cfg.dropout, t))
                cin = chs[i]
            levels[i] = _Level(blocks, Upsample(cin, cfg.up[i]) if cfg.up[i] else None)
        self.up = nn.ModuleList(levels)
        self.norm_out = Norm(cin, g, t)
        self.conv_out = CausalConv3d(cin, cfg.in_channels, 3)

    def forward(self, z: Tensor, state: StreamState | None = None) -> Tensor:
        h = self.mid(self.conv_in(z, state), state)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h, state)
            if level.resample is not None:
                h = level.resample(h, state)
        return self.conv_out(F.silu(self.norm_out(h, state)), state)


# ----------------------------------------------------------------------------- posterior and the VAE


class DiagonalGaussian:
    def __init__(self, moments: Tensor):  # (B, 2C, T, H, W)
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL to N(0, I), summed over all but the batch dim: (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class CausalVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        z = cfg.latent_channels
        self.quant_conv = CausalConv3d(2 * z, 2 * z, 1)
        self.post_quant_conv = CausalConv3d(z, z, 1)
        assign_stream_keys(self)

    # -- whole clips ------------------------------------------------------------------------------------

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """(B, C, T, H, W) in [-1, 1], T = 4k+1 (a single image is T = 1) -> posterior over (k+1) frames."""
        return self.encode_chunk(x, None)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.decode_chunk(z, None)[0]

    def forward(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None):
        post = self.encode(x)
        z = post.sample(generator) if sample else post.mode()
        return self.decode(z), post

    # -- streaming --------------------------------------------------------------------------------------

    def encode_chunk(
        self, x: Tensor, state: StreamState | None
    ) -> tuple[DiagonalGaussian, StreamState | None]:
        """One temporal chunk. The first chunk has 1 + f*m frames, later ones f*m (f = temporal factor)."""
        f = self.cfg.temporal_factor
        first = state is None or not state.started
        if (x.shape[2] - first) % f:
            want = "1 + a multiple of" if first else "a multiple of"
            raise ValueError(
                f"chunk of {x.shape[2]} frames: the {'first' if first else 'next'} needs {want} {f}"
            )
        s = None if state is None else state.fork()
        moments = self.quant_conv(self.encoder(x, s), s)
        return DiagonalGaussian(moments), (None if s is None else s.advance())

    def decode_chunk(self, z: Tensor, state: StreamState | None) -> tuple[Tensor, StreamState | None]:
        """One chunk of latent frames -> its video frames (the first latent frame gives 1 frame, others f)."""
        s = None if state is None else state.fork()
        x = self.decoder(self.post_quant_conv(z, s), s)
        return x, (None if s is None else s.advance())

    def encode_stream(self, chunks: Iterable[Tensor]) -> Iterator[DiagonalGaussian]:
        """Posterior per chunk of frames (see `encode_chunk` for chunk lengths); constant memory."""
        state = StreamState()
        for x in chunks:
            post, state = self.encode_chunk(x, state)
            yield post

    def decode_stream(self, z: Tensor | Iterable[Tensor], chunk: int = 4) -> Iterator[Tensor]:
        """Frames chunk by chunk, from latents (B, C, T, h, w) split every `chunk` latent frames (or an
        iterable of latent chunks): a writer can consume them as they come."""
        chunks = z.split(chunk, dim=2) if isinstance(z, Tensor) else z
        state = StreamState()
        for zc in chunks:
            x, state = self.decode_chunk(zc, state)
            yield x


def split_frames(x: Tensor, latent_chunk: int, temporal_factor: int = 4) -> list[Tensor]:
    """Split (B, C, T, H, W) into encoder chunks: 1 + f*n frames first, then f*n frames each."""
    n = latent_chunk * temporal_factor
    first = x[:, :, : 1 + n]
    rest = x[:, :, 1 + n :]
    return [first, *rest.split(n, dim=2)] if rest.shape[2] else [first]


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, VAEConfig] = {
    # tests: every block kind on CPU in milliseconds
    "tiny": VAEConfig(
        base_channels=8,
        channel_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        norm_groups=4,
        encoder_blocks=["2d", "3d", "3d", "3d"],
    ),
    # Open-Sora-Plan v1.2 CausalVideoVAE layout (its GroupNorm spans time; its upsampler differs, see #8)
    "osp-v1.2": VAEConfig(
        encoder_conv_in="2d",
        encoder_blocks=["2d", "2d", "3d", "3d"],
        norm_over_time=True,
        scaling_factor=0.18215,
    ),
    "default": VAEConfig(),
}


def vae_preset(name: str) -> VAEConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown VAE preset {name!r} (choose from: {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[name])


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


__all__ = [
    "PRESETS",
    "CausalVAE",
    "DiagonalGaussian",
    "StreamState",
    "VAEConfig",
    "split_frames",
    "vae_preset",
]
