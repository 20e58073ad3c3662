"""Spatial tiling for the causal video VAE: large frames in overlapping tiles, blended, at bounded memory.

As in Open-Sora-Plan and EasyAnimate: tiles of `tile` pixels on a grid of stride ~ tile * (1 - overlap),
the last tile flush with the border; each tile goes through the VAE alone and the outputs are blended with
a separable linear ramp across every interior overlap (weight 1 up to the image border), normalised by the
accumulated weight. The encoder's moments (mean, log-variance) are blended in latent space, the decoder's
frames in pixel space. Frames no larger than one tile go through untiled, giving exactly the VAE's result.

Tiling composes with temporal streaming: every tile keeps its own `StreamState`, so a long, large video
runs tile x chunk, and the chunked result equals the whole-video tiled result exactly (blending is per
frame). Tiling is *not* exact: the VAE's receptive field (and its per-frame mid attention) spans the whole
frame, so a tile sees less context than the full frame; `tiling_error` measures the difference.

Layout everywhere: (B, C, T, H, W). The grid is laid out in latent units, so tiles stay aligned to the
spatial factor f in pixel space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from longvideo.models.vae.layers import StreamState
from longvideo.models.vae.model import CausalVAE, DiagonalGaussian

TileKey = tuple[int, int]  # (row, column) in the tile grid
TileStates = dict[TileKey, StreamState]


@dataclass
class TilingConfig:
    tile: int = 256  # tile size in pixels, a multiple of the VAE's spatial factor
    overlap: float = 0.25  # fraction of the tile shared with each neighbour
    blend: bool = True  # False: hard cut in the middle of each overlap (naive tiling, a baseline)

    def stride(self, factor: int) -> int:
        """Grid step in pixels: tile * (1 - overlap), rounded down to the spatial factor."""
        return math.floor(self.tile * (1.0 - self.overlap) / factor + 1e-9) * factor  # 1e-9: 0.7*80 < 56

    def validate(self, factor: int = 8) -> TilingConfig:
        if not isinstance(self.tile, int) or self.tile <= 0 or self.tile % factor:
            raise ValueError(
                f"tile must be a positive multiple of the spatial factor {factor}, got {self.tile}"
            )
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap is a fraction of the tile in [0, 1), got {self.overlap}")
        if self.stride(factor) < factor:
            raise ValueError(
                f"overlap {self.overlap} leaves a grid step below the spatial factor {factor} for tile "
                f"{self.tile}: lower the overlap or enlarge the tile"
            )
        return self


# ----------------------------------------------------------------------------- grid and weights


def tile_spans(n: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) of the tiles covering 0..n along one axis; the last one flush with the border."""
    if n <= tile:
        return [(0, n)]
    starts = [*range(0, n - tile, stride), n - tile]
    return [(a, a + tile) for a in starts]


def span_weights(spans: list[tuple[int, int]], blend: bool = True) -> list[Tensor]:
    """Blend weight of each tile along one axis, (end - start,) each, > 0 wherever a tile must count.

    blend: a linear ramp over the overlap with each neighbour, at pixel centres (never 0 or 1 inside
    it), weight 1 elsewhere and at the image borders; where only two tiles overlap their ramps sum to 1.
    Not blend: 1 on the tile's own side of the middle of each overlap, 0 beyond (a hard seam).
    """
    out = []
    for k, (a, b) in enumerate(spans):
        p = torch.arange(a, b, dtype=torch.float64) + 0.5  # pixel centres
        w = torch.ones(b - a, dtype=torch.float64)
        if k > 0 and (d := spans[k - 1][1] - a) > 0:  # overlap with the previous tile, on our left
            w = torch.minimum(w, ((p - a) / d).clamp(max=1.0) if blend else (p >= a + d / 2).double())
        if k + 1 < len(spans) and (d := b - spans[k + 1][0]) > 0:  # with the next tile, on our right
            w = torch.minimum(w, ((b - p) / d).clamp(max=1.0) if blend else (p < b - d / 2).double())
        out.append(w.float())
    return out


def _check_states(states: TileStates | None, keys: list[TileKey]) -> None:
    if states and states.keys() != set(keys):  # a tile would restart (or run on another's state) mid-video
        raise ValueError(
            f"stream states hold tiles {sorted(states)} but this chunk has {keys}: "
            "frame size or tiling changed mid-stream"
        )


def _blend_tiles(
    run: Callable[[TileKey, Tensor], Tensor],
    x: Tensor,
    cfg: TilingConfig,
    f: int,
    encode: bool,
    states: TileStates | None,
) -> Tensor:
    """Blend run(key, x_tile) over the grid of tiles of x. encode: x in pixels -> output in latents
    (f times smaller); decode: x in latents -> output in pixels (f times larger)."""
    s_in, s_out = (f, 1) if encode else (1, f)
    t_in = cfg.tile // f * s_in  # the tile in x's units
    h, w = x.shape[-2:]
    if h <= t_in and w <= t_in:
        _check_states(states, [(0, 0)])
        return run((0, 0), x)  # one tile: exactly the VAE's own result
    if h % s_in or w % s_in:
        raise ValueError(f"tiled encoding needs frames that are multiples of the spatial factor {f}: {h}x{w}")
    t, s = cfg.tile // f, cfg.stride(f) // f  # the grid, in latent units
    rows, cols = tile_spans(h // s_in, t, s), tile_spans(w // s_in, t, s)
    _check_states(states, [(i, j) for i in range(len(rows)) for j in range(len(cols))])
    w_rows = span_weights([(a * s_out, b * s_out) for a, b in rows], cfg.blend)
    w_cols = span_weights([(a * s_out, b * s_out) for a, b in cols], cfg.blend)
    out = wsum = None
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            y = run((i, j), x[..., r0 * s_in : r1 * s_in, c0 * s_in : c1 * s_in])  # (B, C', T', th, tw)
            if out is None:  # accumulate in fp32: bf16 sums of several tiles would lose the blend
                out = y.new_zeros(
                    *y.shape[:-2], rows[-1][1] * s_out, cols[-1][1] * s_out, dtype=torch.float32
                )
                wsum = torch.zeros(out.shape[-2:], device=y.device)
            wt = (w_rows[i][:, None] * w_cols[j][None, :]).to(y.device)  # (th, tw)
            rs, cs = slice(r0 * s_out, r1 * s_out), slice(c0 * s_out, c1 * s_out)
            out[..., rs, cs] += y.float() * wt
            wsum[rs, cs] += wt
    return (out / wsum).to(y.dtype)  # normalised: any number of overlapping tiles sums to 1


# ----------------------------------------------------------------------------- encode / decode


def _tiled(
    vae: CausalVAE, x: Tensor, states: TileStates | None, cfg: TilingConfig | None, encode: bool
) -> tuple[Tensor, TileStates | None]:
    """Encoder moments (B, 2C, T', H/f, W/f) of frames x, or frames (B, 3, T, f*h, f*w) of latents x, tile
    by tile; states None: the whole video, nothing kept."""
    f = vae.cfg.spatial_factor
    cfg = (cfg or TilingConfig()).validate(f)
    new: TileStates = {}

    def run(key: TileKey, xt: Tensor) -> Tensor:
        state = None if states is None else states.get(key, StreamState())
        if encode:
            post, state = vae.encode_chunk(xt, state)
            y = torch.cat([post.mean, post.logvar], dim=1)  # the moments, blended as such
        else:
            y, state = vae.decode_chunk(xt, state)
        if state is not None:
            new[key] = state
        return y

    y = _blend_tiles(run, x, cfg, f, encode, states)
    return y, (None if states is None else new)


def tiled_encode(vae: CausalVAE, x: Tensor, cfg: TilingConfig | None = None) -> DiagonalGaussian:
    """(B, 3, T, H, W) -> posterior over (B, C, T', H/f, W/f), built from blended moments."""
    return DiagonalGaussian(_tiled(vae, x, None, cfg, encode=True)[0])


def tiled_decode(vae: CausalVAE, z: Tensor, cfg: TilingConfig | None = None) -> Tensor:
    """(B, C, T', h, w) latents -> (B, 3, T, f*h, f*w) frames, blended in pixel space."""
    return _tiled(vae, z, None, cfg, encode=False)[0]


def tiled_encode_chunk(
    vae: CausalVAE, x: Tensor, states: TileStates | None, cfg: TilingConfig | None = None
) -> tuple[DiagonalGaussian, TileStates]:
    """One temporal chunk (chunk lengths as `CausalVAE.encode_chunk`), tiled. `states` (None or {} to
    start): (row, col) -> that tile's StreamState; the returned dict is the next chunk's, the old one
    stays valid."""
    moments, states = _tiled(vae, x, {} if states is None else states, cfg, encode=True)
    return DiagonalGaussian(moments), states


def tiled_decode_chunk(
    vae: CausalVAE, z: Tensor, states: TileStates | None, cfg: TilingConfig | None = None
) -> tuple[Tensor, TileStates]:
    """One chunk of latent frames, tiled; `states` as in `tiled_encode_chunk`."""
    return _tiled(vae, z, {} if states is None else states, cfg, encode=False)


# ----------------------------------------------------------------------------- measurement


@torch.no_grad()
def tiling_error(vae: CausalVAE, x: Tensor, cfg: TilingConfig | None = None) -> dict[str, float]:
    """Tiled vs untiled on video x: max/mean |difference| of the encoder's mean and log-variance, and of
    the decoded frames (both decoders fed the untiled mean, so this isolates the decoder's tiling)."""
    ref, til = vae.encode(x), tiled_encode(vae, x, cfg)
    frames = vae.decode(ref.mean)
    diffs = {
        "encode_mean": til.mean - ref.mean,
        "encode_logvar": til.logvar - ref.logvar,
        "decode": tiled_decode(vae, ref.mean, cfg) - frames,
    }
    out = {}
    for name, d in diffs.items():
        out[f"{name}_max"] = d.abs().max().item()
        out[f"{name}_mean"] = d.abs().mean().item()
    return out


__all__ = [
    "TilingConfig",
    "span_weights",
    "tile_spans",
    "tiled_decode",
    "tiled_decode_chunk",
    "tiled_encode",
    "tiled_encode_chunk",
    "tiling_error",
]
