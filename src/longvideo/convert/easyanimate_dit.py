"""EasyAnimate v1 / v3 `Transformer3DModel` (config.json + state dict) -> our `VideoDiT` ("motion"), exactly.

Read from `easyanimate/models/{transformer3d,attention,motion_module}.py` (commit d3b8bbb); proven by the
`easyanimate_v1_dit` and `easyanimate_v3_dit` parity fixtures. The model is PixArt-alpha (per-frame patch
Conv2d, PixArt 2D sin-cos position table on a `sample_size / patch_size` grid with interpolation scale
max(sample_size // 64, 1), adaLN-single, learned sigma when out_channels = 2 in_channels) whose blocks run
spatial self-attention -> motion module (`attn_temporal`) -> cross-attention -> feed-forward.

Config translation (EasyAnimate -> DiTConfig):
- num_layers, num_attention_heads -> num_heads, attention_head_dim -> head_dim, in_channels,
  out_channels -> learn_sigma, caption_channels -> text_dim, sample_size / patch_size -> pos_embed_base,
  norm_eps; enable_uvit -> uvit_skips 13 (EasyAnimate's skips are hard-wired for 28 layers);
- basic_block_type "motionmodule" (v1): `motion_module_kwargs` for every block; "global_motionmodule" (v3):
  `motion_module_kwargs_even` / `_odd` for even / odd blocks (-> motion_attn / motion_attn_odd);
- motion kwargs: num_attention_heads -> motion_heads, num_transformer_block -> motion_layers,
  attention_block_types Temporal_Self / Global_Self -> "temporal" / "global", block_size -> motion_grid
  (only with motion_module_type "VanillaGrid"); norm_num_groups -> motion_norm_groups.
Asserted: ada_norm_single, gelu-approximate, attention bias, cross_attention_dim = D, no patch_3d / fake_3d,
sinusoidal temporal position encoding on (computed here for any length, so
temporal_position_encoding_max_len only bounds the source), temporal_attention_dim_div 1.
Not expressible, refused: the inpainting (InP) variants' extra input channels and CLIP image tokens
(`clip_projection`), other block types, "remove_time_embedding_in_photo".

Key map: ours = theirs except the motion module, which EasyAnimate nests one level deeper:
`transformer_blocks.{i}.attn_temporal.temporal_transformer.X` -> `transformer_blocks.{i}.attn_temporal.X`.
The motion attentions' stored sinusoid tables (`...attention_blocks.{k}.pos_encoder.pe`) are checked
against the one we compute and consumed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longvideo.convert.dit_keymap import KeyMap, SourceConfig, load_dit, pixart_stem, table_check
from longvideo.models.dit import DiTConfig, VideoDiT
from longvideo.models.dit.layers import sinusoid_table

SOURCE = "EasyAnimate Transformer3DModel"
UVIT_SKIPS, UVIT_LAYERS = 13, 28  # Transformer3DModel's U-ViT: blocks 0-12 push, blocks 15-27 pop
_ATTN = {"Temporal_Self": "temporal", "Global_Self": "global"}
# VanillaTemporalModule keyword defaults for keys a config may leave out (all "off")
_MOTION_DEFAULTS = {"temporal_attention_dim_div": 1, "block_size": 1, "remove_time_embedding_in_photo": False}
_NO_EFFECT = (
    "dropout", "num_embeds_ada_norm", "use_linear_projection", "upcast_attention",
)  # fmt: skip


def _motion(c: SourceConfig, key: str, grid_type: bool) -> tuple[int, int, list[str], int]:
    """(heads, layers, attention kinds, grid) of one motion_module_kwargs dict."""
    mm = c.get(key)
    if not isinstance(mm, dict):
        c.problem(f"{key} is not a dict")
        return 1, 1, ["temporal"], 1
    m = SourceConfig(mm, f"{SOURCE} {key}", _MOTION_DEFAULTS)
    heads, layers = m.integer("num_attention_heads"), m.integer("num_transformer_block")
    types = m.get("attention_block_types") or []
    unknown = [t for t in types if t not in _ATTN]
    if unknown or not types:
        m.problem(f"attention_block_types={types} (supported: {sorted(_ATTN)})")
    m.expect("temporal_position_encoding", True, why="our motion attention always adds the sinusoid")
    m.expect("temporal_attention_dim_div", 1)
    m.expect("remove_time_embedding_in_photo", False, None, why="single images would differ")
    m.ignore("temporal_position_encoding_max_len", "zero_initialize", "cross_attention_dim")
    grid = m.integer("block_size")
    if grid != 1 and not grid_type:
        m.problem(f"block_size={grid} needs motion_module_type 'VanillaGrid'")
    if m.unknown():
        m.problem(f"unknown option(s) {m.unknown()[:4]}")
    c.problems += [f"{key}: {p}" for p in m.problems]
    return heads, layers, [_ATTN.get(t, "temporal") for t in types], grid


def easyanimate_dit_config(raw: dict) -> DiTConfig:
    """Our DiTConfig for a Transformer3DModel config.json (v1 or v3); one UserError lists what we cannot
    express."""
    c = SourceConfig(raw, SOURCE)
    c.ignore(*_NO_EFFECT)
    layers, heads, head_dim = (
        c.integer(k) for k in ("num_layers", "num_attention_heads", "attention_head_dim")
    )
    dim = heads * head_dim
    in_ch, out_ch = c.integer("in_channels"), c.integer("out_channels")
    if out_ch not in (in_ch, 2 * in_ch):
        why = (
            "an inpainting (InP) transformer: its extra input channels and CLIP image tokens are unsupported"
        )
        c.problem(f"in_channels={in_ch}, out_channels={out_ch} ({why if in_ch > out_ch else 'unsupported'})")
    c.expect("norm_type", "ada_norm_single")
    c.expect("activation_fn", "gelu-approximate")
    c.expect("attention_bias", True)
    c.expect("norm_elementwise_affine", False)
    c.expect("only_cross_attention", False)
    c.expect("double_self_attention", False)
    c.expect("attention_type", "default")
    for key in ("patch_3d", "fake_3d", "time_position_encoding_before_transformer"):
        c.expect(key, False, None)
    if c.get("cross_attention_dim") not in (None, dim):
        c.problem(f"cross_attention_dim={c.c['cross_attention_dim']} != heads x head_dim = {dim}")
    text_dim, p, size = c.integer("caption_channels"), c.integer("patch_size"), c.integer("sample_size")
    interp = c.get("interpolation_scale") if "interpolation_scale" in c.c else None
    grid_type = c.expect("motion_module_type", "Vanilla", "VanillaGrid") == "VanillaGrid"
    block = c.expect("basic_block_type", "motionmodule", "global_motionmodule")
    if block == "global_motionmodule":
        heads_m, layers_m, kinds, grid = _motion(c, "motion_module_kwargs_even", grid_type)
        heads_o, layers_o, kinds_odd, grid_o = _motion(c, "motion_module_kwargs_odd", grid_type)
        if (heads_o, layers_o, grid_o) != (heads_m, layers_m, grid):
            c.problem("even and odd motion modules differ in heads / layers / block_size")
        c.ignore("motion_module_kwargs")
    else:
        heads_m, layers_m, kinds, grid = _motion(c, "motion_module_kwargs", grid_type)
        kinds_odd = []
    uvit = bool(c.get("enable_uvit")) if "enable_uvit" in c.c else False
    if uvit and layers != UVIT_LAYERS:
        c.problem(f"enable_uvit with num_layers={layers} (EasyAnimate's U-ViT is wired for {UVIT_LAYERS})")
    eps, groups = float(c.get("norm_eps") or 1e-6), c.integer("norm_num_groups")  # groups: motion GroupNorm
    c.finish()
    return DiTConfig(
        family="motion", in_channels=in_ch, learn_sigma=out_ch == 2 * in_ch, num_layers=layers,
        num_heads=heads, head_dim=head_dim, text_dim=text_dim, norm_eps=eps, abs_pos_embed="pixart",
        pos_embed_base=size // p, pos_embed_interp=float(interp or max(size // 64, 1)), patch_size=[1, p, p],
        uvit_skips=UVIT_SKIPS if uvit else 0, motion_heads=heads_m, motion_layers=layers_m,
        motion_attn=kinds, motion_attn_odd=kinds_odd, motion_grid=grid,
        motion_norm_groups=groups,
    )  # fmt: skip


def key_map(cfg: DiTConfig) -> KeyMap:
    """Every key of our model for `cfg`, with the Transformer3DModel key it comes from."""
    km = pixart_stem(KeyMap(SOURCE, "easyanimate"))
    km.same(*(f"long_connect_fc.{j}" for j in range(cfg.uvit_skips)))
    pe = table_check(lambda n: sinusoid_table(n, cfg.dim, torch.device("cpu")), "sinusoid table")
    for i in range(cfg.num_layers):
        b = f"transformer_blocks.{i}"
        km.same(*(f"{b}.{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")))
        km.same(f"{b}.ff.net.0.proj", f"{b}.ff.net.2")
        km.add(f"{b}.scale_shift_table")
        ours, theirs = f"{b}.attn_temporal", f"{b}.attn_temporal.temporal_transformer"
        for m in ("norm", "proj_in", "proj_out"):
            _moved(km, f"{ours}.{m}", f"{theirs}.{m}")
        kinds = cfg.motion_attn_odd if (i % 2 and cfg.motion_attn_odd) else cfg.motion_attn
        for j in range(cfg.motion_layers):
            lo, lt = f"{ours}.transformer_blocks.{j}", f"{theirs}.transformer_blocks.{j}"
            for k in range(len(kinds)):
                ao, at = f"{lo}.attention_blocks.{k}", f"{lt}.attention_blocks.{k}"
                for p in ("to_q", "to_k", "to_v"):  # AnimateDiff: q/k/v without bias
                    km.add(f"{ao}.{p}.weight", f"{at}.{p}.weight")
                _moved(km, f"{ao}.to_out.0", f"{at}.to_out.0")
                _moved(km, f"{lo}.norms.{k}", f"{lt}.norms.{k}")
                km.consume(f"{at}.pos_encoder.pe", pe)
            for m in ("ff.net.0.proj", "ff.net.2", "ff_norm"):
                _moved(km, f"{lo}.{m}", f"{lt}.{m}")
    return km


def _moved(km: KeyMap, ours: str, theirs: str) -> None:
    km.add(f"{ours}.weight", f"{theirs}.weight")
    km.add(f"{ours}.bias", f"{theirs}.bias")


def load_easyanimate_dit(
    raw_config: dict, sd: dict[str, Tensor], dtype: torch.dtype = torch.float32
) -> VideoDiT:
    """Our VideoDiT holding a Transformer3DModel checkpoint (built on the meta device, assign=True)."""
    cfg = easyanimate_dit_config(raw_config)
    return load_dit(cfg, sd, key_map(cfg), dtype)


__all__ = ["SOURCE", "easyanimate_dit_config", "key_map", "load_easyanimate_dit"]
