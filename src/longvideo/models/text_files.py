"""The files of a text encoder folder, checked before `transformers` sees any of them (models/text.py).

A folder is untrusted (downloaded from strangers): `resolve_folders` finds the model and tokenizer folders
of the layouts text.py lists, `model_files` and `tokenizer_files` name the files we hand on (config.json +
model.safetensors or its shards; the tokenizer's files), each resolved inside the folder the user named
(models/weights.py `confine`) and checked (JSON shapes and sizes; a crafted tokenizer.json that would panic
the tokenizers library), and `_stage` links them into a private folder, tokenizer_config.json without its
`*_file` keys (paths the library would open). A folder with only `pytorch_model.bin` (a pickle) is refused
with how to convert it.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from longvideo.errors import UserError
from longvideo.models.weights import MAX_JSON_BYTES, check_name, confine, read_json, regular_file, write_json

T5_FAMILY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
CLIP_FAMILY = ("clip_text_model", "clip")
# Files any one of which marks a folder as holding a tokenizer AutoTokenizer can load.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
)
# The files a tokenizer folder may hand the library (and `longvideo convert` copies); nothing else is seen.
TOKENIZER_ALL = (*TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json", "merges.txt", "spm.model")
MODEL_WEIGHTS, MODEL_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")  # transformers' pickles: never loaded
MAX_TOKENIZER_BYTES = MAX_JSON_BYTES  # any one tokenizer file (mT5's tokenizer.json: 16 MB)
MODEL_KINDS = ("BPE", "WordPiece", "WordLevel", "Unigram")
MAX_ID = 2**31 - 1


def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).is_file() for f in TOKENIZER_FILES)


def resolve_folders(path: str | Path, tokenizer_path: str | Path | None = None) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) for the layouts the module docstring lists, each resolving inside
    the folder named (the sibling `tokenizer*/` of a named `text_encoder*/`: inside its parent)."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"text encoder folder not found: {str(path)!r}")
    if not root.is_dir():
        raise UserError(f"text encoder path is not a folder: {str(path)!r}")
    if (root / "text_encoder" / "config.json").is_file():
        model_dir, candidates = root / "text_encoder", [root / "tokenizer", root / "text_encoder"]
    elif (root / "config.json").is_file():
        model_dir, candidates = root, [root]
        if root.name.startswith("text_encoder"):  # DIR/text_encoder_2 -> DIR/tokenizer_2
            candidates.append(root.parent / root.name.replace("text_encoder", "tokenizer", 1))
    else:
        raise UserError(
            f"no text encoder in {str(path)!r}: expected config.json there, "
            "or a pipeline folder with text_encoder/config.json"
        )
    tok_root = root
    if tokenizer_path is not None:
        tp = tok_root = Path(tokenizer_path)
        if not tp.is_dir():
            raise UserError(f"tokenizer folder not found: {str(tokenizer_path)!r}")
        candidates = [tp / "tokenizer", tp]
    tok_dir = next((c for c in candidates if _has_tokenizer(c)), None)
    if tok_dir is None:
        where = str(tokenizer_path) if tokenizer_path is not None else f"{root} (or its tokenizer/ folder)"
        raise UserError(f"no tokenizer in {where!r}: expected one of {', '.join(TOKENIZER_FILES)}")
    confine(model_dir, root)
    sibling = tokenizer_path is None and tok_dir not in (root, root / "tokenizer", root / "text_encoder")
    confine(tok_dir, root.parent if sibling else tok_root)  # DIR/text_encoder_2 named: DIR/tokenizer_2
    return model_dir, tok_dir


def model_files(model_dir: Path) -> dict[str, Path]:
    """{file name: resolved path} of the files a text encoder loads from: config.json and its safetensors
    weights (model.safetensors, or the index and its shards), each resolving inside `model_dir`."""
    files = {"config.json": _file(model_dir / "config.json", model_dir)}
    if (model_dir / MODEL_INDEX).is_file():
        index = read_json(model_dir / MODEL_INDEX, root=model_dir)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{model_dir / MODEL_INDEX}: no weight_map (not a sharded safetensors index)")
        files[MODEL_INDEX] = _file(model_dir / MODEL_INDEX, model_dir)
        for shard in sorted({check_name(v, model_dir / MODEL_INDEX) for v in weight_map.values()}):
            if not shard.endswith(".safetensors"):
                raise UserError(f"{model_dir / MODEL_INDEX}: shard {shard!r} is not a .safetensors file")
            files[shard] = _file(model_dir / shard, model_dir)
    elif (model_dir / MODEL_WEIGHTS).is_file():
        files[MODEL_WEIGHTS] = _file(model_dir / MODEL_WEIGHTS, model_dir)
    elif any((model_dir / f).is_file() for f in PICKLED) or list(model_dir.glob("*.bin")):
        model_type = _read_model_type(model_dir)[0]
        loader = T5_FAMILY.get(model_type) or ("CLIPTextModel" if model_type in CLIP_FAMILY else "AutoModel")
        raise UserError(
            f"cannot load the text encoder in {model_dir}: it has only pytorch_model.bin, a pickle, which "
            'longvideo never loads; if you trust the file, convert it once with: python -c "import '
            f"transformers as t; p='{model_dir}'; t.{loader}.from_pretrained(p, "
            'use_safetensors=False).save_pretrained(p, safe_serialization=True)"'
        )
    else:
        raise UserError(f"cannot load the text encoder in {model_dir}: no {MODEL_WEIGHTS} (or {MODEL_INDEX})")
    return files


def tokenizer_files(tok_dir: Path) -> dict[str, Path]:
    """{file name: resolved path} of the tokenizer files in `tok_dir` (`TOKENIZER_ALL`, plus config.json,
    which AutoTokenizer reads when tokenizer_config.json names no class), each resolving inside `tok_dir`,
    no larger than MAX_TOKENIZER_BYTES, the JSON ones of the shape the library expects."""
    files = {}
    for name in (*TOKENIZER_ALL, "config.json"):
        if (tok_dir / name).exists() or (tok_dir / name).is_symlink():
            files[name] = real = _file(tok_dir / name, tok_dir)
            size = os.stat(real).st_size
            if size > MAX_TOKENIZER_BYTES:
                raise UserError(f"{tok_dir / name}: {size} bytes, too large for a tokenizer file")
    for name in ("special_tokens_map.json", "added_tokens.json", "config.json"):
        if name in files:
            read_json(tok_dir / name, root=tok_dir)
    if "tokenizer_config.json" in files:
        _check_tokenizer_config(tok_dir / "tokenizer_config.json", read_json(files["tokenizer_config.json"]))
    if "tokenizer.json" in files:
        _check_tokenizer_json(tok_dir / "tokenizer.json", read_json(files["tokenizer.json"]))
    return files


def _file(path: Path, root: Path) -> Path:
    try:
        return regular_file(path, root)
    except FileNotFoundError:
        raise UserError(f"{path}: missing (a broken link?)") from None


def _check_tokenizer_config(where: Path, cfg: dict) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(f"{where}: {msg}")

    need(isinstance(cfg.get("tokenizer_class", ""), str | None), "tokenizer_class must be a string")
    mml = cfg.get("model_max_length", 1)
    need(isinstance(mml, int | float) and not isinstance(mml, bool) and mml > 0, "bad model_max_length")
    added = cfg.get("added_tokens_decoder", {})
    need(isinstance(added, dict), "added_tokens_decoder must be an object")
    for k, v in added.items():
        need(re.fullmatch(r"\d{1,10}", k) is not None and int(k) <= MAX_ID, f"bad token id {k[:20]!r}")
        need(isinstance(v, dict) and isinstance(v.get("content"), str), f"token {k}: no content string")


def _check_tokenizer_json(where: Path, tok: dict) -> None:
    """The parts of a tokenizer.json whose bad values panic the tokenizers library (a crash, not an error)
    instead of failing its parser: token ids, the template post-processor's pieces, precompiled charsmaps."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(f"{where}: {msg} (not a valid tokenizer.json)")

    def is_id(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_ID

    model = tok.get("model")
    need(isinstance(model, dict), "no model object")
    kind = model.get("type")
    need(kind is None or kind in MODEL_KINDS, f"model type {str(kind)[:40]!r} is not one of {MODEL_KINDS}")
    vocab = model.get("vocab")
    if kind == "Unigram":
        need(isinstance(vocab, list), "a Unigram vocab is a list of [piece, score]")
        for e in vocab:
            need(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str), "bad Unigram vocab entry")
            need(isinstance(e[1], int | float) and math.isfinite(e[1]), "a Unigram score must be a number")
        unk = model.get("unk_id")
        need(unk is None or (is_id(unk) and unk < len(vocab)), "unk_id is not an index into the vocab")
    elif vocab is not None:
        need(isinstance(vocab, dict), f"a {kind} vocab is an object of token -> id")
        need(all(is_id(i) for i in vocab.values()), "token ids must be integers in [0, 2^31)")
    added = tok.get("added_tokens", [])
    need(isinstance(added, list), "added_tokens must be a list")
    for a in added:
        need(
            isinstance(a, dict) and is_id(a.get("id")) and isinstance(a.get("content"), str),
            "bad added token",
        )
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding"):
        need(tok.get(key) is None or isinstance(tok[key], dict), f"{key} must be an object or null")
    for node in _objects(tok):
        if node.get("type") == "Precompiled":
            need(_charsmap_ok(node.get("precompiled_charsmap")), "precompiled_charsmap does not parse")
        elif node.get("type") == "TemplateProcessing":
            _check_template(node, need, is_id)


def _objects(node: Any, depth: int = 0) -> Any:
    """Every JSON object in a tree (the normalizer / pre_tokenizer / post_processor parts nest)."""
    if depth > 64:
        raise UserError("tokenizer.json: nested too deeply")
    if isinstance(node, dict):
        yield node
        for k, v in node.items():
            if k != "vocab" and isinstance(v, dict | list):
                yield from _objects(v, depth + 1)
    elif isinstance(node, list) and node and isinstance(node[0], dict | list):
        for v in node:
            yield from _objects(v, depth + 1)


def _charsmap_ok(data: Any) -> bool:
    """sentencepiece's precompiled normalizer: a little-endian u32 trie size, the trie (u32 units), the
    normalized strings."""
    if not isinstance(data, str):
        return False
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    size = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
    return size > 0 and size % 4 == 0 and 4 + size <= len(raw)


def _check_template(node: dict, need: Any, is_id: Any) -> None:
    specials = node.get("special_tokens", {})
    need(isinstance(specials, dict), "TemplateProcessing special_tokens must be an object")
    for name, t in specials.items():
        ok = isinstance(t, dict) and isinstance(t.get("ids"), list) and isinstance(t.get("tokens"), list)
        need(ok and all(is_id(i) for i in t["ids"]), f"special token {name[:40]!r}: bad ids")
        need(len(t["ids"]) == len(t["tokens"]), f"special token {name[:40]!r}: as many ids as tokens")
    for part, seqs in (("single", ("A",)), ("pair", ("A", "B"))):
        pieces = node.get(part, [])
        where = f"TemplateProcessing {part}"
        need(isinstance(pieces, list), f"{where} must be a list")
        for piece in pieces:
            need(isinstance(piece, dict) and len(piece) == 1, f"{where}: bad piece")
            ((what, body),) = piece.items()
            need(isinstance(body, dict) and is_id(body.get("type_id")), f"{where}: bad piece")
            name = str(body.get("id"))[:40]
            if what == "Sequence":
                need(body.get("id") in seqs, f"{where} uses the sequence {name!r}")
            else:
                need(
                    what == "SpecialToken" and body.get("id") in specials, f"{where} uses {name!r}, undefined"
                )


def _stage(model: dict[str, Path], tok: dict[str, Path]) -> tempfile.TemporaryDirectory:
    """A private folder of links to the checked files: `model/` and `tokenizer/`, all transformers sees.
    tokenizer_config.json is written without its `*_file(s)` keys (the library finds files by name)."""
    stage = tempfile.TemporaryDirectory(prefix="longvideo-text-")
    for sub, files in (("model", model), ("tokenizer", tok)):
        d = Path(stage.name) / sub
        d.mkdir()
        for name, real in files.items():
            if sub == "tokenizer" and name == "tokenizer_config.json":
                cfg = read_json(real)
                write_json(d / name, {k: v for k, v in cfg.items() if not re.search(r"_files?$", k)})
            else:
                (d / name).symlink_to(real)
    return stage


def _read_model_type(model_dir: Path) -> tuple[str, list[str]]:
    cfg_file = model_dir / "config.json"
    _file(cfg_file, model_dir)  # a link out of the folder is named as such
    try:
        raw = read_json(cfg_file, root=model_dir)
    except UserError as e:
        raise UserError(f"{cfg_file}: unreadable config ({str(e).removeprefix(f'{cfg_file}: ')})") from None
    if not isinstance(raw.get("model_type"), str):
        raise UserError(f"{cfg_file}: no model_type, so the text encoder family is unknown")
    archs = raw.get("architectures") or []
    return raw["model_type"], [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
