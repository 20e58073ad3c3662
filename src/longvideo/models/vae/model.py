"""The causal video VAE: 4x8x8 compression (T = 4k+1 frames -> k+1 latent frames), KL posterior, and
exact streaming in temporal chunks at constant memory.

Structure follows Open-Sora-Plan v1.2's CausalVideoVAE (levels of ResNet blocks, joint space-time stride
2,2,2 down-sampling, per-frame mid attention) with two changes that make chunked processing exact: norms
never mix frames, and temporal up-sampling is causal (`TimeUpsample`). Both are config switches, so the
seeds' own layouts stay expressible (`norm_over_time=True` is OSP's GroupNorm; it refuses to stream).

Streaming replaces EasyAnimate's Slice VAE for our own VAEs. The Slice VAE encodes mini-batches of frames
independently (an odd clip's frame 0 alone, then 8 at a time) and decodes mini-batches of latent frames
(2 at a time, the same way); its decoder "feature sharing" runs conv_in and the mid block (with its
attention) on a mini-batch together with the previous and the next one, then crops back, but the
up-sampling path sees only its own mini-batch, zero-padded in time at both ends, and its norms and
attention take statistics per mini-batch. So its slices join approximately, look ahead, and depend on the
mini-batch sizes. Here every causal conv carries the exact context it needs (its input tail) from the
previous chunk in a `StreamState`, so chunks join exactly (the result is the whole-clip result) with only
past context, at the cost of a few frames of features per layer. The Slice VAE stays expressible, to load
EasyAnimate's weights: `slice_encode`, `slice_decode`, `slice_feature_sharing` (see `slicing.py`) with
`time_padding="centered_zeros"`; it refuses a `StreamState`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longvideo.models.vae.layers import (
    DOWNSAMPLE_KINDS,
    TIME_PADDINGS,
    TIME_UPSAMPLE_KINDS,
    UPSAMPLE_KINDS,
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
from longvideo.models.vae.slicing import decode_slices, encode_slices


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
    )  # after level i; kinds in layers.DOWNSAMPLE_KINDS
    # after level i; kinds in layers.UPSAMPLE_KINDS ("spacetime_trilinear": OSP v1.2, not streamable)
    up: list[str] = field(default_factory=lambda: ["", "spatial", "spacetime", "spacetime"])
    mid_attention: bool = True
    # EasyAnimate's "3d" mid attention (Attention3D): one attention over all pixels of all frames, its
    # GroupNorm over them too (not streamable); False attends within each frame
    mid_attention_over_time: bool = False
    norm_groups: int = 32  # GroupNorm groups; 0 = RMS norm over channels per pixel (Wan 2.1, see layers.Norm)
    norm_over_time: bool = False  # OSP v1.2: GroupNorm statistics over all frames (not streamable)
    # with norm_over_time, False keeps the "2d" ResBlocks' norms per frame: OSP's ResnetBlock2D runs frame
    # by frame (its GroupNorm sees one frame), only its 3D blocks, mid attention and norm_out span time
    norm_over_time_in_2d_blocks: bool = True
    # layers.TIME_PADDINGS: "causal" (replicate the first frame, streamable) or "centered_zeros"
    # (EasyAnimate's CausalConv3d in its Slice-VAE mode pads time with zeros on both sides; not streamable)
    time_padding: str = "causal"
    # Slice mode (EasyAnimate's Slice VAE: bounded memory without a streaming state; not streamable, and not
    # equal to whole-clip processing): encode in mini-batches of this many frames and decode in mini-batches
    # of this many latent frames, each independently, after a lone first frame when the clip length is odd
    # (0: whole clip); see slicing.py
    slice_encode: int = 0
    slice_decode: int = 0
    # with slice_decode: conv_in + mid block of a mini-batch also see the previous and next ones (then crop):
    # EasyAnimate's decoder "feature sharing"
    slice_feature_sharing: bool = False
    dropout: float = 0.0
    scaling_factor: float = 1.0  # latents for the DiT: (z - shift) * scale
    shift_factor: float = 0.0
    # per-channel statistics of the latents (Wan 2.1's VAE does the same): when set, the DiT sees
    # (z - mean_c) / std_c * scaling_factor - a global scale would leave low-variance channels (which carry
    # detail) buried under the noise until the last sampling steps
    latents_mean: list[float] = field(default_factory=list)
    latents_std: list[float] = field(default_factory=list)

    def validate(self) -> VAEConfig:
        from longvideo import limits

        limits.check_types(self)  # a UserError is a ValueError
        n = len(self.channel_mult)
        sizes = (self.in_channels, self.latent_channels, self.base_channels, self.num_res_blocks, n)
        if min(sizes) < 1 or min(self.channel_mult) < 1:
            raise ValueError("channel counts, channel_mult and num_res_blocks must be >= 1")
        if self.num_res_blocks > limits.MAX_SUBLAYERS or n > limits.MAX_LEVELS:
            raise ValueError(
                f"num_res_blocks must be <= {limits.MAX_SUBLAYERS} and channel_mult have <= "
                f"{limits.MAX_LEVELS} levels (VAEs have 2-3 blocks, 4 levels), got {self.num_res_blocks}, {n}"
            )
        kinds = {self.encoder_conv_in, *self.encoder_blocks, *self.decoder_blocks}
        if not kinds <= {"2d", "3d"}:
            bad = sorted(kinds - {"2d", "3d"})
            raise ValueError(f"encoder_conv_in, encoder_blocks and decoder_blocks are 2d or 3d, got {bad}")
        if not 0 <= self.dropout < 1 or self.scaling_factor <= 0:
            raise ValueError("dropout must be in [0, 1) and scaling_factor > 0")
        for name in ("encoder_blocks", "decoder_blocks", "down", "up"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs one entry per level ({n})")
        bad = [u for u in self.up if u and u not in UPSAMPLE_KINDS]
        if bad:
            raise ValueError(f"unknown up kind(s) {bad} (expected '' or one of {', '.join(UPSAMPLE_KINDS)})")
        bad = [d for d in self.down if d and d not in DOWNSAMPLE_KINDS]
        if bad:
            kinds = ", ".join(DOWNSAMPLE_KINDS)
            raise ValueError(f"unknown down kind(s) {bad} (expected '' or one of {kinds})")
        if self.down.count("spacetime") != sum(u in TIME_UPSAMPLE_KINDS for u in self.up):
            raise ValueError("as many space-time down- as up-samplers")
        if self.time_padding not in TIME_PADDINGS:
            kinds = ", ".join(TIME_PADDINGS)
            raise ValueError(f"unknown time_padding {self.time_padding!r} (expected one of {kinds})")
        if self.slice_encode < 0 or self.slice_decode < 0:
            raise ValueError("slice_encode / slice_decode are mini-batch sizes (0: whole clip)")
        if self.slice_feature_sharing and not self.slice_decode:
            raise ValueError("slice_feature_sharing needs slice_decode (the decoder's mini-batch size)")
        for stats in (self.latents_mean, self.latents_std):
            if stats and len(stats) != self.latent_channels:
                raise ValueError(
                    f"latents_mean / latents_std need {self.latent_channels} values (one per channel)"
                )
        if any(s <= 0 for s in self.latents_std):
            raise ValueError("latents_std values must be > 0")
        if self.norm_groups < 0:
            raise ValueError("norm_groups must be >= 0 (0: RMS norm per pixel)")
        for c in (self.base_channels * m for m in self.channel_mult):
            if self.norm_groups and c % self.norm_groups:
                raise ValueError(f"channels {c} not divisible by norm_groups {self.norm_groups}")
        return self

    def block_norm_over_time(self, kind: str) -> bool:
        """Whether a ResBlock of this kind ("2d"/"3d") normalises over time."""
        return self.norm_over_time and (kind != "2d" or self.norm_over_time_in_2d_blocks)

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
        g, t, p = cfg.norm_groups, cfg.norm_over_time, cfg.time_padding
        self.block_1 = ResBlock(ch, ch, "3d", g, cfg.dropout, cfg.block_norm_over_time("3d"), p)
        self.attn_1 = FrameAttention(ch, g, t, cfg.mid_attention_over_time) if cfg.mid_attention else None
        self.block_2 = ResBlock(ch, ch, "3d", g, cfg.dropout, cfg.block_norm_over_time("3d"), p)

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
        g, t, p = cfg.norm_groups, cfg.norm_over_time, cfg.time_padding
        self.conv_in = make_conv(cfg.encoder_conv_in, cfg.in_channels, chs[0], time_pad=p)
        levels, cin = [], chs[0]
        for i, cout in enumerate(chs):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                kind = cfg.encoder_blocks[i]
                blocks.append(ResBlock(cin, cout, kind, g, cfg.dropout, cfg.block_norm_over_time(kind), p))
                cin = cout
            levels.append(_Level(blocks, Downsample(cout, cfg.down[i], p) if cfg.down[i] else None))
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(cin, cfg)
        self.norm_out = Norm(cin, g, t)
        self.conv_out = CausalConv3d(cin, 2 * cfg.latent_channels, 3, time_pad=p)

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
        g, t, p = cfg.norm_groups, cfg.norm_over_time, cfg.time_padding
        cin = chs[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, cin, 3, time_pad=p)
        self.mid = _Mid(cin, cfg)
        levels: list[_Level] = [None] * len(chs)  # type: ignore[list-item]
        for i in reversed(range(len(chs))):  # deepest level first, stored at its index (OSP's `up.{i}`)
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                kind = cfg.decoder_blocks[i]
                blocks.append(ResBlock(cin, chs[i], kind, g, cfg.dropout, cfg.block_norm_over_time(kind), p))
                cin = chs[i]
            levels[i] = _Level(blocks, Upsample(cin, cfg.up[i], p) if cfg.up[i] else None)
        self.up = nn.ModuleList(levels)
        self.norm_out = Norm(cin, g, t)
        self.conv_out = CausalConv3d(cin, cfg.in_channels, 3, time_pad=p)

    def forward(self, z: Tensor, state: StreamState | None = None, starts_video: bool = True) -> Tensor:
        """`starts_video` (without a state): whether z's first latent frame is the video's first."""
        return self.upsample(self.latent_features(z, state), state, starts_video)

    def latent_features(self, z: Tensor, state: StreamState | None = None) -> Tensor:
        """conv_in and the mid block: the features at the latent frame rate."""
        return self.mid(self.conv_in(z, state), state)

    def upsample(self, h: Tensor, state: StreamState | None = None, starts_video: bool = True) -> Tensor:
        """The levels from the deepest up, then the output head: latent features -> frames."""
        for level in reversed(self.up):
            for block in level.block:
                h = block(h, state)
            if level.resample is not None:
                h = level.resample(h, state, starts_video)
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
    # The submodules that make latents: equal weights here = equal latents (decoder-only stages keep them).
    LATENT_PATH = ("encoder", "quant_conv")

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

    def encode(self, x: Tensor, strict: bool = True) -> DiagonalGaussian:
        """(B, C, T, H, W) in [-1, 1], T = 4k+1 (a single image is T = 1) -> posterior over (k+1) frames.

        `strict=False` accepts any T: the clip is padded at the end by repeating its last frame up to the
        next 4k+1 (causality: the padding changes no latent of the real frames); decode and cut back.
        """
        self.check_input(x, whole=strict)
        f = self.cfg.temporal_factor
        pad = (-(x.shape[2] - 1)) % f
        if pad:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        return self.encode_chunk(x, None)[0]

    def decode(self, z: Tensor) -> Tensor:
        return self.decode_chunk(z, None)[0]

    def check_input(self, x: Tensor, whole: bool = True) -> None:
        """Clear errors for what the VAE cannot take: wrong rank or channels, sizes off the 8-grid, T."""
        from longvideo.errors import UserError

        c, f, s = self.cfg.in_channels, self.cfg.temporal_factor, self.cfg.spatial_factor
        if x.ndim != 5:
            raise UserError(f"VAE input must be (B, C, T, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != c:
            raise UserError(f"VAE input has {x.shape[1]} channels, this VAE takes {c}")
        if x.shape[3] % s or x.shape[4] % s:
            raise UserError(f"VAE input {x.shape[3]}x{x.shape[4]}: height and width must be multiples of {s}")
        if whole and (x.shape[2] - 1) % f:
            raise UserError(f"VAE input has {x.shape[2]} frames: needs {f}k+1 (or encode(x, strict=False))")

    def forward(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None):
        post = self.encode(x)
        z = post.sample(generator) if sample else post.mode()
        return self.decode(z), post

    # -- streaming --------------------------------------------------------------------------------------

    def encode_chunk(
        self, x: Tensor, state: StreamState | None
    ) -> tuple[DiagonalGaussian, StreamState | None]:
        """One temporal chunk. The first chunk has 1 + f*m frames, later ones f*m (f = temporal factor).

        In slice mode (`slice_encode`) the whole clip, in independent mini-batches; no state allowed.
        """
        if self.cfg.slice_encode:
            self._refuse_state(state, "slice_encode")
            moments = self.quant_conv(encode_slices(self.encoder, x, self.cfg.slice_encode))
            return DiagonalGaussian(moments), None
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
        """One chunk of latent frames -> its video frames (the first latent frame gives 1 frame, others f).

        In slice mode (`slice_decode`) the whole clip, in independent mini-batches; no state allowed.
        """
        if self.cfg.slice_decode:
            self._refuse_state(state, "slice_decode")
            z = self.post_quant_conv(z)
            return decode_slices(self.decoder, z, self.cfg.slice_decode, self.cfg.slice_feature_sharing), None
        s = None if state is None else state.fork()
        x = self.decoder(self.post_quant_conv(z, s), s)
        return x, (None if s is None else s.advance())

    @staticmethod
    def _refuse_state(state: StreamState | None, switch: str) -> None:
        if state is not None:
            raise ValueError(
                f"slice mode ({switch}) processes mini-batches independently (they see the clip's future "
                "and not each other's past): it cannot be streamed exactly; encode/decode whole clips"
            )

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
    # Open-Sora-Plan v1.2 CausalVideoVAE, exactly (checked against its own code by convert/osp_vae.py's
    # fixture test): GroupNorm over time outside its 2D blocks, look-ahead trilinear up-sampling, so it
    # does not stream; our own VAEs do.
    "osp-v1.2": VAEConfig(
        encoder_conv_in="2d",
        encoder_blocks=["2d", "2d", "3d", "3d"],
        up=["", "spatial", "spacetime_trilinear", "spacetime_trilinear"],
        norm_over_time=True,
        norm_over_time_in_2d_blocks=False,
        scaling_factor=0.18215,
    ),
    "default": VAEConfig(),
}


def vae_preset(name: str) -> VAEConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown VAE preset {name!r} (choose from: {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[name])


__all__ = [
    "PRESETS",
    "CausalVAE",
    "DiagonalGaussian",
    "StreamState",
    "VAEConfig",
    "split_frames",
    "vae_preset",
]
