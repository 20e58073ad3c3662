"""`DiTConfig`: one typed config for the video denoiser, and its named presets.

Three block families share one transformer (model.py):
- `motion`   EasyAnimate v1-v3: per-frame spatial attention, an AnimateDiff-style motion module,
             cross-attention.
- `full3d`   Open-Sora-Plan v1.2: full self-attention over all t*h*w tokens with 3D RoPE, cross-attention.
- `parallel` Vchitect-2.0: spatial (joint with text), temporal (1D RoPE) and cross-attention branches, summed.

The switches below the family exist so that the seeds' published checkpoints map onto this model exactly
(their fixtures in shared/fixtures pin them down); our own models are free to use any combination.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

FAMILIES = ("motion", "full3d", "parallel")
MOTION_ATTN = ("temporal", "global")


@dataclass
class DiTConfig:
    family: str = "full3d"
    # --- latents in and out
    in_channels: int = 4  # latent channels C
    # extra input channels concatenated after the noisy latents (0 = T2V; C + 1 = [masked latents | mask] for
    # image-to-video and continuation); their patch-embedding weights start at zero
    cond_channels: int = 0
    learn_sigma: bool = False  # output 2C channels (mean and variance: PixArt IDDPM, EasyAnimate v1)
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])  # (t, h, w)
    # --- transformer
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 24
    ff_mult: int = 4  # GELU(tanh) feed-forward, hidden = ff_mult * dim
    norm_eps: float = 1e-6  # LayerNorms without affine, as PixArt / SD3
    text_dim: int = 32  # text encoder states (T5/mT5: 4096)
    caption_proj: str = "mlp"  # "mlp": PixArt linear_1-GELU(tanh)-linear_2; "linear": SD3 context_embedder
    # timestep conditioning: "single" = PixArt adaLN-single (one shared MLP -> 6*dim, each block adds its own
    # learned scale_shift_table); "zero" = SD3 adaLN-Zero (each block projects the embedding itself)
    adaln: str = "single"
    pooled_dim: int = 0  # pooled text vector added to the timestep embedding (SD3 / Vchitect); adaln="zero"
    # add an MLP of the masked mean of the projected caption tokens to the timestep embedding, so a global
    # attribute (a shape, a motion) conditions every token through adaLN, not only through cross-attention;
    # its output layer starts at zero (a model extended with it computes the same function). Needs no
    # pooled text encoder: works with T5 alone
    caption_pool: bool = False
    freq_dim: int = 256  # sinusoidal timestep features
    # absolute 2D sin-cos position embedding added per frame after patchify: "none", "pixart" (positions
    # scaled to a pos_embed_base grid, any size) or "sd3" (a pos_embed_max grid, centre crop)
    abs_pos_embed: str = "none"
    pos_embed_base: int = 16  # in patches: the training grid (PixArt/SD3 `base_size`)
    pos_embed_max: int = 0  # in patches: "sd3" crop table size
    pos_embed_interp: float = 1.0  # positions divided by this (PixArt `interpolation_scale`)
    uvit_skips: int = 0  # U-ViT long skips: block i's output joins block L-1-i's input, i < uvit_skips
    # --- full3d: 3D RoPE (head_dim split equally over t, h, w; rotate-half; positions / rope_scale)
    rope_theta: float = 10000.0
    rope_scale: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # OSP interpolation_scale_thw
    # --- parallel: 1D RoPE over frames on the temporal branch (Vchitect: theta 1e6, complex pairs)
    temporal_rope_theta: float = 1e6
    temporal_rope_scale: float = 1.0
    text_stream: bool = False  # dual-stream text as SD3 MM-DiT / Vchitect: each block updates the text too
    # --- motion: AnimateDiff-style module after the spatial attention (EasyAnimate `attn_temporal`)
    motion_heads: int = 2
    motion_layers: int = 1
    motion_attn: list[str] = field(default_factory=lambda: ["temporal", "temporal"])
    motion_attn_odd: list[str] = field(default_factory=list)  # odd blocks, if set (v3: temporal, global)
    motion_grid: int = 1  # >1: temporal attention over grid x grid spatial patches (v1 "VanillaGrid": 2)
    motion_norm_groups: int = 32
    # --- long-window extension (extend/, ExVideo post-tuning); all off by default
    # motion: >0 = each motion attention adds rows of a trainable (N, dim) frame-position table instead of the
    # fixed sinusoid (ExVideo `TrainableTemporalTimesteps`); clips of more than N frames are refused
    temporal_pos_table: int = 0
    # an identity-initialised 3x3x3 Conv3d over the token grid (ExVideo `positional_conv`): motion: inside
    # each motion attention after the position add; full3d / parallel: once, after the patch embedding
    temporal_adapter: bool = False
    # RIFLEx (arXiv 2502.15894): the temporal RoPE component k (1-based; 0 = off) gets the frequency
    # 0.9 * 2 pi / rope_riflex_frames, so one period covers the extended window (in latent frames)
    rope_riflex_k: int = 0
    rope_riflex_frames: int = 0

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def temporal_rope(self) -> tuple[int, float]:
        """(features of head_dim rotated by frame position, their theta): full3d the t third of the 3D
        RoPE; parallel the temporal branch's 1D RoPE (the part RIFLEx / interpolation act on)."""
        if self.family == "full3d":
            return self.head_dim // 3, self.rope_theta
        return self.head_dim, self.temporal_rope_theta

    def validate(self) -> DiTConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"DiTConfig: {msg}")

        from longvideo import limits

        try:
            limits.check_types(self)
        except ValueError as e:
            need(False, str(e))
        need(self.family in FAMILIES, f"family {self.family!r} not in {FAMILIES}")
        sizes = (self.in_channels, self.num_layers, self.num_heads, self.head_dim, self.text_dim)
        need(min(sizes) > 0 and self.ff_mult > 0, "channels, layers, heads, head_dim and ff_mult must be > 0")
        cap = f"{limits.MAX_LAYERS} (video DiTs have 28-60)"
        need(self.num_layers <= limits.MAX_LAYERS, f"num_layers {self.num_layers} is more than {cap}")
        need(self.motion_layers <= limits.MAX_SUBLAYERS, f"motion_layers is more than {limits.MAX_SUBLAYERS}")
        counts = (self.cond_channels, self.pooled_dim, self.pos_embed_max, self.rope_riflex_k)
        counts += (self.rope_riflex_frames, self.temporal_pos_table)
        need(min(counts) >= 0, "cond_channels, pooled_dim, pos_embed_max and rope_riflex_* must be >= 0")
        need(self.pos_embed_max <= 4096, "pos_embed_max is a table side in patches: at most 4096")
        need(self.freq_dim > 0 and self.freq_dim % 2 == 0, "freq_dim must be even and > 0")
        need(self.pos_embed_base > 0 and self.motion_heads > 0 and self.motion_norm_groups > 0,
             "pos_embed_base, motion_heads and motion_norm_groups must be > 0")  # fmt: skip
        scales = (self.norm_eps, self.pos_embed_interp, self.rope_theta, self.temporal_rope_theta,
                  self.temporal_rope_scale, *self.rope_scale)  # fmt: skip
        need(min(scales) > 0, "norm_eps, pos_embed_interp, rope thetas and rope scales must be > 0")
        need(len(self.patch_size) == 3 and min(self.patch_size) >= 1, "patch_size is (t, h, w), each >= 1")
        need(self.caption_proj in ("mlp", "linear"), "caption_proj is 'mlp' or 'linear'")
        need(self.adaln in ("single", "zero"), "adaln is 'single' or 'zero'")
        need(self.pooled_dim == 0 or self.adaln == "zero", "pooled_dim needs adaln='zero'")
        need(self.abs_pos_embed in ("none", "pixart", "sd3"), "abs_pos_embed is 'none', 'pixart' or 'sd3'")
        need(self.abs_pos_embed != "sd3" or self.pos_embed_max > 0, "abs_pos_embed='sd3' needs pos_embed_max")
        need(self.dim % 4 == 0, "dim must be a multiple of 4 (sin-cos position embedding)")
        need(0 <= self.uvit_skips <= self.num_layers // 2, "uvit_skips must be <= num_layers // 2")
        need(len(self.rope_scale) == 3, "rope_scale is (t, h, w)")
        need(self.temporal_pos_table >= 0, "temporal_pos_table must be >= 0")
        need(self.temporal_pos_table == 0 or self.family == "motion", "temporal_pos_table is a motion option")
        need(self.rope_riflex_k == 0 or self.family in ("full3d", "parallel"), "rope_riflex_k needs RoPE")
        need(self.rope_riflex_k == 0 or self.rope_riflex_frames > 0, "rope_riflex_k needs rope_riflex_frames")
        need(self.rope_riflex_k <= self.temporal_rope[0] // 2, "rope_riflex_k is past the temporal RoPE")
        if self.family == "full3d":
            need(self.head_dim % 6 == 0, "full3d: head_dim must split into three even parts (t, h, w)")
        if self.family == "parallel":
            need(self.head_dim % 2 == 0, "parallel: head_dim must be even (temporal RoPE)")
        need(not self.text_stream or self.family == "parallel", "text_stream is a parallel-family option")
        if self.family == "motion":
            need(self.dim % self.motion_heads == 0, "motion: dim must divide into motion_heads")
            need(self.dim % self.motion_norm_groups == 0, "motion: dim must divide into motion_norm_groups")
            need(self.motion_grid >= 1 and self.motion_layers >= 1, "motion: grid and layers >= 1")
            for kinds in (self.motion_attn, self.motion_attn_odd):
                need(all(k in MOTION_ATTN for k in kinds), f"motion attention kinds are {MOTION_ATTN}")
            need(len(self.motion_attn) > 0, "motion: at least one motion attention")
        return self


# ----------------------------------------------------------------------------- presets

_TINY = dict(in_channels=4, num_layers=2, num_heads=2, head_dim=16, text_dim=24)

PRESETS: dict[str, DiTConfig] = {
    # tests: every option of each family on CPU in milliseconds
    "tiny-motion": DiTConfig(
        family="motion",
        **{**_TINY, "num_layers": 4},
        uvit_skips=2,
        abs_pos_embed="pixart",
        pos_embed_base=4,
        motion_attn_odd=["temporal", "global"],
        motion_grid=2,
        motion_norm_groups=8,
    ),
    "tiny-full3d": DiTConfig(family="full3d", **{**_TINY, "head_dim": 24}),
    "tiny-parallel": DiTConfig(family="parallel", **_TINY),
    # the parallel family as Vchitect-2.0 has it: SD3 MM-DiT conditioning and dual-stream text
    "tiny-parallel-mmdit": DiTConfig(
        family="parallel",
        **_TINY,
        text_stream=True,
        adaln="zero",
        caption_proj="linear",
        pooled_dim=20,
        abs_pos_embed="sd3",
        pos_embed_base=8,
        pos_embed_max=16,
    ),
    # Open-Sora-Plan v1.2 `OpenSoraT2V-ROPE-L/122` (~2.7B): mT5-XXL text, 4-channel causal-VAE latents
    "osp-v1.2": DiTConfig(
        family="full3d", in_channels=4, num_layers=32, num_heads=24, head_dim=96, text_dim=4096
    ),
    # Vchitect-2.0 on SD3-medium dims (24 x 1536; unverified, see reference/exvideo_vchitect.md): SD3 VAE
    # latents (16 channels, no temporal compression), CLIP-L/bigG pooled 2048 + T5-XXL states 4096
    "vchitect-2b": DiTConfig(
        family="parallel",
        in_channels=16,
        num_layers=24,
        num_heads=24,
        head_dim=64,
        text_dim=4096,
        text_stream=True,
        adaln="zero",
        caption_proj="linear",
        pooled_dim=2048,
        abs_pos_embed="sd3",
        pos_embed_base=64,
        pos_embed_max=192,
    ),
    # EasyAnimate v1: PixArt-XL-2-512 (28 x 1152, T5-XXL) + "VanillaGrid" motion modules, learned sigma
    "easyanimate-v1": DiTConfig(
        family="motion",
        in_channels=4,
        learn_sigma=True,
        num_layers=28,
        num_heads=16,
        head_dim=72,
        text_dim=4096,
        abs_pos_embed="pixart",
        pos_embed_base=32,
        motion_heads=8,
        motion_grid=2,
    ),
}


def dit_preset(name: str) -> DiTConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown DiT preset {name!r} (choose from: {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[name])
