"""The source formats `longvideo convert --from` reads, and how a source becomes our pipeline's parts.

    format           transformer              VAE (from SRC/vae or --vae)          text encoder
    osp-v1.2         OpenSoraT2V              CausalVAEModel (osp_vae)             mT5-XXL, 512 tokens
    easyanimate-v1   Transformer3DModel v1    - (v1 decodes with SD's image VAE)   T5-XXL, 120 tokens
    easyanimate-v3   Transformer3DModel v3    AutoencoderKLMagvit (easyanimate_vae) T5-XXL, 120 tokens
    vchitect-2       VchitectXLTransformer    - (SD3's image VAE; pooled CLIP text: transformer only)
    exvideo-svd      the 16 extended SVD temporal blocks, for diffusers (exvideo_svd.py)

A text encoder is taken from SRC/text_encoder + SRC/tokenizer (diffusers' layout) or --text-encoder.
What a source lacks is reported, not invented: the written folder says what to add (`_missing`).

The scheduler settings are the seed's training setup (OSP v1.2: DDPM eps, linear betas; EasyAnimate v1-v3:
PixArt's IDDPM, eps with a learned variance we do not use, linear betas) and its sampling defaults where
the seed states them (OSP's sample scripts: 100 steps, CFG 7.5, Euler ancestral; EasyAnimate v3: 25 steps,
CFG 7, DPM++); frames / size come from the transformer's training sample size where the config has it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from longvideo.convert import easyanimate_dit, osp_dit, vchitect_dit
from longvideo.convert.dit_keymap import KeyMap, load_dit
from longvideo.convert.files import (
    component_dir,
    locate,
    read_config,
    read_state_dict,
    source_root,
    weights_file,
)
from longvideo.convert.sniff import FORMATS as NAMES
from longvideo.convert.sniff import describe, identify, source_format
from longvideo.diffusion import DiffusionConfig
from longvideo.errors import UserError
from longvideo.models.dit import DiTConfig, VideoDiT
from longvideo.models.vae.model import CausalVAE
from longvideo.models.weights import confine

LoadVAE = Callable[[dict, dict[str, Tensor], torch.dtype], CausalVAE]


@dataclass(frozen=True)
class SourceFormat:
    name: str  # the --from name
    title: str
    dit_config: Callable[[dict], DiTConfig]  # the source's config.json -> ours (UserError if not expressible)
    key_map: Callable[[DiTConfig], KeyMap]
    load_vae: LoadVAE | None
    no_vae: str  # why there is no VAE / what to add
    text_max_length: int
    text_encoder: str  # which one the seed uses
    diffusion: DiffusionConfig | None  # None: our pipeline cannot run this transformer
    defaults: dict  # PipelineDefaults fields the seed fixes
    pipeline_note: str = ""  # why VideoPipeline cannot run it, when diffusion is None
    vae_kind: str = ""  # what sniff.identify calls its VAE's state dict


def _osp_vae(raw: dict, sd: dict[str, Tensor], dtype: torch.dtype) -> CausalVAE:
    from longvideo.convert.osp_vae import load_osp_vae

    return load_osp_vae(raw, sd, dtype)


def _ea_vae(raw: dict, sd: dict[str, Tensor], dtype: torch.dtype) -> CausalVAE:
    from longvideo.convert.easyanimate_vae import load_easyanimate_vae

    return load_easyanimate_vae(raw, sd, dtype)


_EA = (easyanimate_dit.easyanimate_dit_config, easyanimate_dit.key_map)
_VP = DiffusionConfig(objective="eps", schedule="linear", beta_start=1e-4, beta_end=0.02)
FORMATS: dict[str, SourceFormat] = {
    "osp-v1.2": SourceFormat(
        "osp-v1.2", "Open-Sora-Plan v1.2 OpenSoraT2V", osp_dit.osp_dit_config, osp_dit.key_map, _osp_vae,
        "give the release's vae/ folder (CausalVAEModel) with --vae", 512, "google/mt5-xxl", _VP,
        {"steps": 100, "guidance": 7.5, "sampler": "euler_ancestral", "fps": 24.0},
        vae_kind="an Open-Sora-Plan CausalVAEModel",
    ),
    "easyanimate-v1": SourceFormat(
        "easyanimate-v1", "EasyAnimate v1 Transformer3DModel", *_EA, None,
        "EasyAnimate v1 decodes with SD's 2D image VAE, which our causal video VAE does not express",
        120, "T5-XXL (PixArt's t5-v1_1-xxl)", _VP, {"steps": 25, "guidance": 7.0, "sampler": "dpmpp_2m"},
    ),
    "easyanimate-v3": SourceFormat(
        "easyanimate-v3", "EasyAnimate v3 Transformer3DModel", *_EA, _ea_vae,
        "give the release's vae/ folder (AutoencoderKLMagvit) with --vae", 120,
        "T5-XXL (PixArt's t5-v1_1-xxl)", _VP, {"steps": 25, "guidance": 7.0, "sampler": "dpmpp_2m"},
        vae_kind="an EasyAnimate AutoencoderKLMagvit VAE",
    ),
    "vchitect-2": SourceFormat(
        "vchitect-2", "Vchitect-2.0 VchitectXLTransformerModel",
        vchitect_dit.vchitect_dit_config, vchitect_dit.key_map, None,
        "Vchitect-2.0 decodes with SD3's 2D image VAE, which our causal video VAE does not express",
        256, "CLIP-L + CLIP-bigG (pooled) + T5-XXL", None, {},
        "it needs pooled CLIP text (pooled_dim > 0) and SD3's image VAE",
    ),
}  # fmt: skip
ALL_FORMATS = NAMES  # + "exvideo-svd", converted by exvideo_svd.py
assert set(ALL_FORMATS) == {*FORMATS, "exvideo-svd"}


def get_format(name: str) -> SourceFormat:
    if name not in FORMATS:
        raise UserError(f"unknown source format {name!r} (choose from: {', '.join(ALL_FORMATS)})")
    return FORMATS[name]


# ----------------------------------------------------------------------------- reading a source


def read_transformer(
    fmt: SourceFormat, src: Path, dtype: torch.dtype = torch.float32
) -> tuple[VideoDiT, dict]:
    """(our VideoDiT, the source's config.json) of the transformer in a source file or folder."""
    cfg_path, weights = locate(src, "transformer")
    root = source_root(src)
    raw = read_config(cfg_path, root)
    other = source_format(raw)
    if other is not None and other != fmt.name:
        title = FORMATS[other].title if other in FORMATS else other
        raise UserError(f"{cfg_path} is the config of {title}, not of {fmt.title}: use --from {other}")
    cls = raw.get("_class_name") or raw.get("model_type")
    if other is None and (cls is not None or "num_layers" not in raw):
        what = repr(cls) if cls else "an unknown model"
        raise UserError(f"{cfg_path} is the config of {what}, not of {fmt.title}")
    try:
        cfg = fmt.dit_config(raw).validate()  # before the key map: its size grows with num_layers
    except (UserError, ValueError, TypeError) as e:
        raise UserError(f"{cfg_path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    sd = read_state_dict(weights, root)
    try:
        return load_dit(cfg, sd, fmt.key_map(cfg), dtype), raw
    except UserError as e:
        raise UserError(f"{weights}: {e}") from None


def find_vae(fmt: SourceFormat, src: Path, vae: str | Path | None) -> Path | None:
    """The VAE folder to convert: --vae, else SRC/vae when the format has a VAE converter."""
    if vae is not None:
        if fmt.load_vae is None:
            raise UserError(f"--vae: {fmt.no_vae}")
        return Path(vae)
    if fmt.load_vae is not None and src.is_dir() and (src / "vae" / "config.json").is_file():
        confine(src / "vae", src)  # then read_vae confines its files to it
        return src / "vae"
    return None


def read_vae(fmt: SourceFormat, folder: Path, dtype: torch.dtype = torch.float32) -> CausalVAE:
    assert fmt.load_vae is not None
    d = component_dir(folder, "vae") if folder.is_dir() else folder.parent
    if d is None:
        raise UserError(f"{folder}: no vae/config.json or config.json (not a VAE folder)")
    root = source_root(folder)
    confine(d, root)  # before it is listed
    weights = weights_file(d) if folder.is_dir() else folder
    raw, sd = read_config(d / "config.json", root), read_state_dict(weights, root)
    found = identify(sd)
    if found is not None and found[0] != fmt.vae_kind:
        raise UserError(f"{weights}: the checkpoint holds {describe(found)}, not {fmt.vae_kind}")
    try:
        return fmt.load_vae(raw, sd, dtype)
    except UserError:
        raise
    except ValueError as e:  # the VAE converters list every problem in one ValueError
        msg = str(e).splitlines()[0]
        raise UserError(f"{weights}: {msg[:400]}{' ...' if len(msg) > 400 else ''}") from None


def find_text_encoder(src: Path, text_encoder: str | Path | None) -> tuple[Path, Path] | None:
    """(model folder, tokenizer folder): --text-encoder (any layout models/text.py reads), else
    SRC/text_encoder + SRC/tokenizer."""
    from longvideo.models.text_files import resolve_folders

    if text_encoder is not None:
        return resolve_folders(text_encoder)
    if src.is_dir() and (src / "text_encoder" / "config.json").is_file():
        return resolve_folders(src)
    return None


def scheduler_json(fmt: SourceFormat, raw: dict) -> dict:
    """{"diffusion": ..., "defaults": ...} for our scheduler/config.json."""
    from longvideo.pipelines.video import PipelineDefaults

    defaults = dict(fmt.defaults)
    size = raw.get("sample_size")
    hw = (
        size if isinstance(size, list) and len(size) == 2 else [size, size] if isinstance(size, int) else None
    )
    if hw is not None and all(isinstance(v, int) and v > 0 for v in hw):
        defaults["height"], defaults["width"] = hw[0] * 8, hw[1] * 8  # the seeds' VAEs: 8x in space
    t = raw.get("sample_size_t")
    if fmt.name == "osp-v1.2" and isinstance(t, int) and t > 0:
        defaults["frames"] = (t - 1) * 4 + 1  # OSP's causal VAE: 4x in time
    assert fmt.diffusion is not None
    return {
        "diffusion": dataclasses.asdict(fmt.diffusion),
        "defaults": dataclasses.asdict(PipelineDefaults(**defaults).validate()),
    }


def detect(path: str | Path) -> str | None:
    """The source format of a folder (`transformer/config.json` or `config.json` of a seed's class), or
    None for anything else (our own pipeline folders, bundled names, missing paths). Never raises."""
    p = Path(path)
    try:
        if not p.is_dir():
            return None
        if (p / "model_index.json").is_file() and read_config(p / "model_index.json", p).get(
            "_class_name"
        ) == "VideoPipeline":
            return None
        d = component_dir(p, "transformer")
        return None if d is None else source_format(read_config(d / "config.json", p))
    except (UserError, OSError):
        return None


__all__ = [
    "ALL_FORMATS",
    "FORMATS",
    "SourceFormat",
    "detect",
    "find_text_encoder",
    "find_vae",
    "get_format",
    "read_transformer",
    "read_vae",
    "scheduler_json",
]
