"""Write a converted source as our pipeline folder, or hand its parts to `VideoPipeline.from_pretrained`.

    longvideo convert --from FORMAT SRC DST [--vae DIR] [--text-encoder DIR] [--overwrite]

DST gets the layout of pipelines/folder.py: transformer/ always; vae/ when the source (or --vae) has a VAE
we convert; text_encoder/ + tokenizer/ when the source (or --text-encoder) has them: their files that
transformers loads (models/text.py `model_files`, `tokenizer_files`), copied as they are, each confined to
the folder named and no more readable than the source's (models/weights.py `copy_file`);
scheduler/config.json with the seed's settings; model_index.json last. A part that cannot be written is
named in model_index.json's `_missing` (with what to add) and in the printed summary; such a folder holds
what converted but does not load as a VideoPipeline until the part is added. For `exvideo-svd`, DST gets
the extension in diffusers' names instead (exvideo_svd.py). Nothing here imports pipelines/ (which imports
this module to load a source folder): the folder primitives come from models/weights.py.

DST is written beside itself under a temporary name and renamed into place when complete (`AtomicFolder`):
a DST that is, holds or lies inside SRC (or --vae / --text-encoder) is refused, and so is an existing
non-empty DST unless `overwrite` (and then only one that a convert wrote); a killed run's leftovers are
swept by the next.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from longvideo import __version__
from longvideo.convert import sources as S
from longvideo.errors import UserError
from longvideo.models.text import TextEncoder, TextEncoderConfig
from longvideo.models.text_files import model_files, tokenizer_files
from longvideo.models.vae.io import save_vae
from longvideo.models.weights import (
    FORMAT,
    AtomicFolder,
    copy_file,
    count_params,
    save_component,
    write_json,
)


def convert_source(
    fmt_name: str,
    src: str | Path,
    dst: str | Path,
    *,
    vae: str | Path | None = None,
    text_encoder: str | Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Convert SRC (a source folder or weights file) of format `fmt_name` into the folder DST; a summary.
    An existing non-empty DST is replaced only with `overwrite` (and only a folder a convert wrote)."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such file or folder")
    for extra, flag in ((vae, "--vae"), (text_encoder, "--text-encoder")):
        if extra is not None and not Path(extra).exists():
            raise UserError(f"{flag} {extra}: no such file or folder")
    if fmt_name == "exvideo-svd":
        return _convert_exvideo(src, Path(dst), overwrite)
    fmt = S.get_format(fmt_name)
    inputs = (src, vae, text_encoder)
    with AtomicFolder(dst, overwrite=overwrite, inputs=inputs) as tmp:  # checks DST first; removed on failure
        transformer, raw = S.read_transformer(fmt, src)
        save_component(transformer, tmp / "transformer", "transformer")
        params, name = count_params(transformer), type(transformer).__name__
        del transformer  # before the VAE: a real-scale DiT is several GB
        index: dict = {
            "_class_name": "VideoPipeline",
            "_format": FORMAT,
            "_longvideo_version": __version__,
            "_converted_from": {"format": fmt.name, "source": str(src.resolve())},
            "transformer": ["longvideo", name],
        }
        vae_dir = S.find_vae(fmt, src, vae)
        if vae_dir is not None:
            vae_model = S.read_vae(fmt, vae_dir)
            save_vae(vae_model, tmp / "vae")
            index["vae"] = ["longvideo", type(vae_model).__name__]
        text = S.find_text_encoder(src, text_encoder)
        if text is not None:
            index.update(_copy_text_encoder(text, tmp, fmt))
        if fmt.diffusion is not None:
            write_json(tmp / "scheduler" / "config.json", S.scheduler_json(fmt, raw))
            index["scheduler"] = ["longvideo", "DiffusionConfig"]
        missing = _missing(fmt, vae_dir is not None, text is not None)
        if missing:
            index["_missing"] = missing
        write_json(tmp / "model_index.json", index)  # last: its presence marks a complete folder
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    return {
        "format": fmt.name,
        "source": str(src),
        "output": str(dst),
        "written": [k for k in parts if k in index],
        "missing": missing,
        "transformer_params": params,
    }


def _missing(fmt: S.SourceFormat, has_vae: bool, has_text: bool) -> dict[str, str]:
    out = {}
    if fmt.diffusion is None:
        out["pipeline"] = f"VideoPipeline cannot run {fmt.title}: {fmt.pipeline_note}"
    if not has_vae:
        out["vae"] = fmt.no_vae
    if not has_text and fmt.diffusion is not None:
        out["text_encoder"] = (
            f"{fmt.text_encoder}: give its folder with --text-encoder (or add text_encoder/ + tokenizer/)"
        )
    return out


def _copy_text_encoder(text: tuple[Path, Path], tmp: Path, fmt: S.SourceFormat) -> dict:
    """Copy the text encoder's and the tokenizer's files (only those transformers loads, checked as loading
    checks them); their model_index.json entries."""
    from longvideo.convert.files import read_config

    model_dir, tok_dir = text  # each already confined to the folder the user named (resolve_folders)
    for folder, files, out in ((model_dir, model_files(model_dir), "text_encoder"),
                               (tok_dir, tokenizer_files(tok_dir), "tokenizer")):  # fmt: skip
        for name in files:
            copy_file(folder / name, folder, tmp / out / name)
    cfg = read_config(model_dir / "config.json")
    arch = (cfg.get("architectures") or [cfg.get("model_type", "AutoModel")])[0]
    te = TextEncoderConfig(max_length=fmt.text_max_length)
    return {
        "text_encoder": ["transformers", arch],
        "tokenizer": ["transformers", "AutoTokenizer"],
        "text_encoder_config": {k: v for k, v in dataclasses.asdict(te).items() if k != "path"},
    }


def _convert_exvideo(src: Path, dst: Path, overwrite: bool) -> dict:
    from longvideo.convert import exvideo_svd as ex

    out = AtomicFolder(
        dst, overwrite=overwrite, inputs=[src], marker="exvideo.json", kind="converted extension"
    )
    with out as tmp:  # DST is checked before anything is read
        sd = ex.convert_exvideo_state_dict(ex.read_extension(src))
        info = ex.write_extension(sd, tmp, str(src))
    return {"output": str(dst), **info}


# ----------------------------------------------------------------------------- from_pretrained


def load_source_parts(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple | None:
    """(vae, transformer, text encoder, scheduler JSON, where) of a seed's source folder, converted in
    memory, as pipelines/folder.py `load_parts` returns them; None if `path` is not a source folder.

    A source without a convertible VAE or a text encoder is a one-line UserError naming the part."""
    name = S.detect(path)
    if name is None:
        return None
    fmt, src = S.get_format(name), Path(path)
    if fmt.diffusion is None:
        raise UserError(f"{src}: VideoPipeline cannot run {fmt.title} ({fmt.pipeline_note})")
    if fmt.load_vae is None:
        raise UserError(f"{src}: VideoPipeline cannot run {fmt.title} ({fmt.no_vae})")
    vae_dir = S.find_vae(fmt, src, None)
    text = S.find_text_encoder(src, None)
    if vae_dir is None or text is None:
        part, need = ("vae", fmt.no_vae) if vae_dir is None else ("text encoder", fmt.text_encoder)
        raise UserError(
            f"{src}: this {fmt.title} folder has no {part} ({need}); convert it with `longvideo convert "
            f"--from {fmt.name}` and the missing part"
        )
    transformer, raw = S.read_transformer(fmt, src, dtype)
    vae = S.read_vae(fmt, vae_dir, dtype)
    te = TextEncoder.from_pretrained(text[0], tokenizer_path=text[1], cfg=TextEncoderConfig(
        max_length=fmt.text_max_length))  # fmt: skip
    return vae, transformer, te, S.scheduler_json(fmt, raw), f"{src} (converted from {fmt.name})"


__all__ = ["convert_source", "load_source_parts"]
