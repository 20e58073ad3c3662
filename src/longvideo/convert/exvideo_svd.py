"""ExVideo-SVD-128f: its extended temporal blocks mapped onto diffusers' `UNetSpatioTemporalConditionModel`.

ExVideo (DiffSynth-Studio, last pre-2.0 commit afd101f3, `diffsynth/models/svd_unet.py`) extends each of
SVD's 16 temporal attention blocks (`TemporalAttentionBlock`) in two ways and fine-tunes those blocks:
1. the fixed sinusoidal frame-position embedding becomes a trainable (N, C) table, indexed by frame number
   (N = 128 in the release), initialised from SVD's sinusoid at "bouncing" positions 0..24, 23..4, 5..24,
   ... (`positional_ids`), so every initial row is a position SVD-XT was trained on;
2. a 3x3x3 `Conv3d` with reflect padding (initialised to identity) runs on the (C, T, H, W) hidden states
   after the position embedding is added, before the temporal transformer block.

In diffusers the same block is a slice of `TransformerSpatioTemporalModel` (TSM): `time_proj` (sinusoid) ->
`time_pos_embed` (MLP) added to the spatial block's output, then `temporal_transformer_blocks.0`. The mapping
(`BLOCK_KEYS`, `SVD_TEMPORAL_BLOCKS`) is exact: DiffSynth's block is diffusers' with renamed weights. The
extension is installed without touching diffusers' forward code (`patch_tsm`):
- `tsm.time_proj` becomes a `PositionTable` (`time_proj.embeddings`, the trainable table; more frames than
  rows is a one-line error: the release covers 128 frames);
- `tsm.positional_conv` holds the conv; a forward pre-hook on the TSM records the frame size and one on its
  temporal block applies the conv to that block's input.

Usage (SVD-XT + the released `model.safetensors`, 128 frames; `longvideo convert --from exvideo-svd` writes
the extension in diffusers' names first, or give the release file directly):

    pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(SVD_XT_FOLDER)
    apply_exvideo(pipe.unet, "exvideo_folder_or_model.safetensors")
    frames = pipe(image, num_frames=128, decode_chunk_size=8).frames[0]

The DiffSynth pipeline's sampling extras (per-frame CFG ramp, latent contrast normalisation, tiled VAE
decode) are its own choices, not part of the weights; diffusers' sampler is used as is.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from longvideo.convert.files import read_state_dict, weights_file
from longvideo.convert.sniff import describe, identify
from longvideo.errors import UserError
from longvideo.models.weights import umask_modes

SOURCE = "ExVideo-SVD extension"
# DiffSynth's SVDUNet is a flat list of blocks; its 16 TemporalAttentionBlocks sit at these indices, in
# forward order, and are the temporal halves of these diffusers TSMs (SVD-XT's UNet layout).
SVD_TEMPORAL_BLOCKS: dict[int, str] = {
    7: "down_blocks.0.attentions.0", 17: "down_blocks.0.attentions.1",
    29: "down_blocks.1.attentions.0", 39: "down_blocks.1.attentions.1",
    51: "down_blocks.2.attentions.0", 61: "down_blocks.2.attentions.1",
    83: "mid_block.attentions.0",
    113: "up_blocks.1.attentions.0", 123: "up_blocks.1.attentions.1", 133: "up_blocks.1.attentions.2",
    144: "up_blocks.2.attentions.0", 154: "up_blocks.2.attentions.1", 164: "up_blocks.2.attentions.2",
    175: "up_blocks.3.attentions.0", 185: "up_blocks.3.attentions.1", 195: "up_blocks.3.attentions.2",
}  # fmt: skip

_T = "temporal_transformer_blocks.0"
# DiffSynth TemporalAttentionBlock module -> diffusers TSM module (each with .weight / .bias unless noted)
_MODULES: dict[str, str] = {
    "positional_embedding_proj.0": "time_pos_embed.linear_1",
    "positional_embedding_proj.2": "time_pos_embed.linear_2",
    "norm_in": f"{_T}.norm_in",
    "act_fn_in.proj": f"{_T}.ff_in.net.0.proj",  # GEGLU: (hidden, gate) = proj(x).chunk(2) in both
    "ff_in": f"{_T}.ff_in.net.2",
    "norm1": f"{_T}.norm1",
    "attn1.to_out": f"{_T}.attn1.to_out.0",
    "norm2": f"{_T}.norm2",
    "attn2.to_out": f"{_T}.attn2.to_out.0",
    "norm_out": f"{_T}.norm3",
    "act_fn_out.proj": f"{_T}.ff.net.0.proj",
    "ff_out": f"{_T}.ff.net.2",
    "positional_conv": "positional_conv",  # ExVideo only
}
BLOCK_KEYS: dict[str, str] = {
    **{f"{a}.{p}": f"{b}.{p}" for a, b in _MODULES.items() for p in ("weight", "bias")},
    **{
        f"{a}.{q}.weight": f"{_T}.{a}.{q}.weight"
        for a in ("attn1", "attn2")
        for q in ("to_q", "to_k", "to_v")
    },
    "positional_embedding.embeddings": "time_proj.embeddings",  # ExVideo only: the trainable table
}
EXTENSION_ONLY = ("positional_conv.weight", "positional_conv.bias", "positional_embedding.embeddings")


def positional_ids(num_frames: int, max_id: int = 25, repeat_length: int = 20) -> list[int]:
    """ExVideo's initial table positions: frames 0..max_id-1 as they are, then bouncing inside SVD-XT's
    trained range: down to max_id - 1 - repeat_length, back up to max_id - 1 (period 2 repeat_length)."""
    ids = []
    for f in range(num_frames):
        if f < max_id:
            ids.append(f)
            continue
        k = (f - max_id) % (2 * repeat_length)
        ids.append(max_id - 2 - k if k < repeat_length else max_id - 2 * repeat_length + k)
    return ids


def svd_sinusoid(positions: Tensor, dim: int) -> Tensor:
    """SVD's frame-position sinusoid (diffusers `Timesteps(dim, flip_sin_to_cos=True, shift=0)`)."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(positions, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class PositionTable(nn.Module):
    """Replaces a TSM's `time_proj`: frame numbers -> rows of a trainable (N, C) table."""

    def __init__(self, num_frames: int, channels: int):
        super().__init__()
        self.embeddings = nn.Parameter(torch.empty(num_frames, channels))

    def forward(self, frame_ids: Tensor) -> Tensor:
        n = self.embeddings.shape[0]
        if frame_ids.numel() and int(frame_ids.max()) >= n:
            raise UserError(f"the ExVideo extension covers {n} frames; asked for {int(frame_ids.max()) + 1}")
        return self.embeddings[frame_ids.long()]


# ----------------------------------------------------------------------------- installing into diffusers


def _record_size(tsm: nn.Module, args: tuple, kwargs: dict) -> None:
    x = args[0] if args else kwargs["hidden_states"]
    tsm._exvideo_hw = tuple(x.shape[-2:])


def _conv_before_block(tsm: nn.Module, block: nn.Module, args: tuple, kwargs: dict):
    """(B*T, H*W, C) tokens -> the conv over (B, C, T, H, W) -> tokens; the block's other inputs as given."""
    x = args[0] if args else kwargs.pop("hidden_states")
    t = kwargs["num_frames"] if "num_frames" in kwargs else args[1]
    (h, w), c = tsm._exvideo_hw, x.shape[-1]
    v = x.reshape(-1, t, h, w, c).permute(0, 4, 1, 2, 3)
    v = tsm.positional_conv(v).permute(0, 2, 3, 4, 1).reshape(x.shape)
    return (v, *args[1:]), kwargs


def patch_tsm(tsm: nn.Module, num_frames: int, conv: bool = True) -> None:
    """Install ExVideo's table (`num_frames` rows) and, with `conv`, its positional conv into one
    diffusers `TransformerSpatioTemporalModel` (new tensors uninitialised: load them, or `identity_init`)."""
    import functools

    if len(tsm.temporal_transformer_blocks) != 1:
        raise UserError("ExVideo extends TSMs with one temporal block (SVD's layout)")
    if isinstance(tsm.time_proj, PositionTable):  # installed before: hooks must not run twice
        if tsm.time_proj.embeddings.shape[0] != num_frames or hasattr(tsm, "positional_conv") != conv:
            raise UserError("this UNet already holds a different ExVideo extension")
        return
    ref = tsm.time_pos_embed.linear_1.weight
    c = ref.shape[1]
    with torch.device(ref.device):  # on the meta device nothing is allocated
        tsm.time_proj = PositionTable(num_frames, c).to(ref.dtype)
        if not conv:
            return
        tsm.positional_conv = nn.Conv3d(c, c, 3, padding=1, padding_mode="reflect", dtype=ref.dtype)
    tsm.register_forward_pre_hook(_record_size, with_kwargs=True)
    block = tsm.temporal_transformer_blocks[0]
    block.register_forward_pre_hook(functools.partial(_conv_before_block, tsm), with_kwargs=True)


@torch.no_grad()
def identity_init(tsm: nn.Module) -> None:
    """ExVideo's starting point: table rows = SVD's sinusoid at `positional_ids`, conv = identity."""
    table = tsm.time_proj.embeddings
    n, c = table.shape
    table.copy_(svd_sinusoid(torch.tensor(positional_ids(n)), c))
    conv = getattr(tsm, "positional_conv", None)
    if conv is not None:
        conv.weight.zero_()
        conv.weight[:, :, 1, 1, 1] = torch.eye(c, device=conv.weight.device, dtype=conv.weight.dtype)
        conv.bias.zero_()


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise UserError("ExVideo-SVD runs on diffusers' SVD UNet: pip install diffusers") from None
    return diffusers


def tsm_paths(unet: nn.Module) -> list[str]:
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    return [n for n, m in unet.named_modules() if isinstance(m, TransformerSpatioTemporalModel)]


def apply_exvideo(unet: nn.Module, extension: str | Path | dict[str, Tensor]) -> nn.Module:
    """Install and load an ExVideo extension into a diffusers UNetSpatioTemporalConditionModel, in place.

    `extension`: the converted folder (`longvideo convert --from exvideo-svd`), the release file
    (DiffSynth keys), or a state dict in either naming. Keys and shapes are checked; a mismatch is a
    one-line UserError naming the key.
    """
    sd = read_extension(extension) if not isinstance(extension, dict) else extension
    if any(k.startswith("blocks.") for k in sd):
        sd = convert_exvideo_state_dict(sd)
    install(unet, sd)
    unet.load_state_dict(sd, strict=False)
    return unet


def install(unet: nn.Module, sd: dict[str, Tensor]) -> None:
    """Patch the TSMs that `sd` extends, then check every key and shape of `sd` against the UNet."""
    paths = tsm_paths(unet)
    for p in paths:
        table = sd.get(f"{p}.time_proj.embeddings")
        if table is not None:
            patch_tsm(unet.get_submodule(p), table.shape[0], conv=f"{p}.positional_conv.weight" in sd)
    own = unet.state_dict()
    unknown = [k for k in sd if k not in own]
    if unknown:
        raise UserError(
            f"the {SOURCE} does not fit this UNet: {len(unknown)} unknown keys, e.g. {unknown[0]}"
        )
    bad = [k for k in sd if sd[k].shape != own[k].shape]
    if bad:
        k = bad[0]
        raise UserError(
            f"the {SOURCE} does not fit this UNet: {k} is {tuple(sd[k].shape)}, the UNet has "
            f"{tuple(own[k].shape)} ({len(bad)} mismatched)"
        )
    for p in paths:
        want = [f"{p}.{v}" for k, v in BLOCK_KEYS.items() if k not in EXTENSION_ONLY]
        present = [k for k in want if k in sd]
        if present and len(present) != len(want):
            miss = sorted(set(want) - set(present))
            raise UserError(f"the {SOURCE} is incomplete: {len(miss)} keys of {p} missing, e.g. {miss[0]}")


# ----------------------------------------------------------------------------- converting the release file


def convert_block(sd: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """One DiffSynth TemporalAttentionBlock's tensors (keys relative to it) -> TSM keys under `prefix`."""
    unused = sorted(set(sd) - set(BLOCK_KEYS))
    if unused:
        raise UserError(f"the {SOURCE} has keys no temporal block explains, e.g. {prefix}{unused[0]}")
    required = [k for k in BLOCK_KEYS if k not in EXTENSION_ONLY]
    missing = [k for k in required if k not in sd]
    if missing:
        raise UserError(f"the {SOURCE} lacks {len(missing)} keys of block {prefix!r}, e.g. {missing[0]}")
    return {f"{prefix}{BLOCK_KEYS[k]}": v for k, v in sd.items()}


def convert_exvideo_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The release file (DiffSynth keys `blocks.{i}.X`) -> diffusers keys `{tsm path}.Y` of SVD-XT's UNet."""
    found = identify(sd)
    if found is not None and found[1] != "exvideo-svd":
        raise UserError(f"the file holds {describe(found)}, not an {SOURCE}")
    per_block: dict[int, dict[str, Tensor]] = {}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        idx, _, local = rest.partition(".")
        if head != "blocks" or not idx.isdigit() or int(idx) not in SVD_TEMPORAL_BLOCKS:
            raise UserError(f"the {SOURCE} has a key outside SVD's 16 temporal blocks: {k}")
        per_block.setdefault(int(idx), {})[local] = v
    absent = sorted(set(SVD_TEMPORAL_BLOCKS) - set(per_block))
    if absent:
        raise UserError(f"the {SOURCE} lacks temporal blocks {absent[:4]} (truncated or another model)")
    out: dict[str, Tensor] = {}
    for i, block in sorted(per_block.items()):
        out.update(convert_block(block, f"{SVD_TEMPORAL_BLOCKS[i]}."))
    return out


def read_extension(path: str | Path) -> dict[str, Tensor]:
    """A converted extension folder, a folder with the release file, or the file itself."""
    p = root = Path(path)
    if p.is_dir():
        p = p / "exvideo.safetensors" if (p / "exvideo.safetensors").is_file() else weights_file(p)
    elif not p.is_file():
        raise UserError(f"{p}: no such file or folder")
    return read_state_dict(p, root if root.is_dir() else p.parent)


def check_against_svd(sd: dict[str, Tensor]) -> int:
    """Check converted keys and shapes against SVD-XT's UNet built on the meta device; the table length."""
    with torch.device("meta"):
        unet = _diffusers().UNetSpatioTemporalConditionModel()  # its defaults are SVD(-XT)'s architecture
    install(unet, sd)
    tables = {v.shape[0] for k, v in sd.items() if k.endswith("time_proj.embeddings")}
    if len(tables) > 1:
        raise UserError(f"the {SOURCE}'s position tables differ in length: {sorted(tables)}")
    return tables.pop() if tables else 0


def write_extension(sd: dict[str, Tensor], folder: Path, source: str) -> dict:
    """`folder/exvideo.safetensors` (diffusers keys) + `folder/exvideo.json`; the summary."""
    from safetensors.torch import save_file

    frames = check_against_svd(sd)
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "exvideo.safetensors",
              metadata={"format": "pt", "component": "exvideo-svd"})  # fmt: skip
    umask_modes(folder / "exvideo.safetensors")  # safetensors writes 0600
    info = {
        "format": "exvideo-svd",
        "source": source,
        "num_frames": frames,
        "temporal_blocks": len({k.split(".time_pos_embed")[0] for k in sd if ".time_pos_embed." in k}),
        "params": sum(v.numel() for v in sd.values()),
        "usage": "StableVideoDiffusionPipeline (SVD-XT) + longvideo.convert.exvideo_svd.apply_exvideo",
    }
    (folder / "exvideo.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


__all__ = [
    "BLOCK_KEYS",
    "SVD_TEMPORAL_BLOCKS",
    "PositionTable",
    "apply_exvideo",
    "convert_block",
    "convert_exvideo_state_dict",
    "identity_init",
    "patch_tsm",
    "positional_ids",
    "read_extension",
    "write_extension",
]
