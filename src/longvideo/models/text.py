"""Text encoder: a thin wrapper over a `transformers` encoder and its tokenizer, loaded from a local folder.

Families (from `config.json`'s `model_type`):

- `t5`, `mt5`, `umt5` -> the encoder-only classes (`T5EncoderModel`, ...): PixArt / EasyAnimate v1-v3
  (T5-XXL, 120 tokens), Open-Sora-Plan v1.2 (mT5-XXL, 512 tokens), Vchitect-2.0 (T5-XXL, 256 tokens).
- `clip_text_model`, `clip` -> `CLIPTextModel` (`CLIPTextModelWithProjection` when the folder's
  `architectures` says so, as SD3's `text_encoder{,_2}` do; then `output="pooled"` is the projected
  `text_embeds`).
- anything else `transformers` knows that is not an encoder-decoder (BERT, RoBERTa, XLM-R, ...)
  -> `AutoModel`.

`encode(prompts)` tokenizes with "max_length" padding + truncation (fixed DiT text length, as PixArt and
OSP do) and returns `(hidden (B, L, D), mask (B, L) long, 1 = keep)`; the mask counts the special tokens
the tokenizer adds (T5's `</s>`, CLIP's start/end, BERT's [CLS]/[SEP]). T5/BERT-like encoders get the
mask; CLIP gets none (its attention is causal and right padding never reaches the real tokens; diffusers'
SD/SD3 pipelines do the same, so padding positions carry the values those models were trained with).
Per-prompt results are kept in an LRU cache, so the empty prompt of classifier-free guidance and the
captions of a small data set are encoded once. Loading never touches the network (`local_files_only`).

Folder layouts: a pipeline folder (`DIR/text_encoder/` + `DIR/tokenizer/`, DESIGN.md §3), one folder
holding both the model and the tokenizer files, or a pipeline's `text_encoder*/` folder whose sibling
`tokenizer*/` holds the tokenizer. `tokenizer_path` overrides where the tokenizer comes from.

A folder is untrusted (downloaded from strangers), so transformers never sees it: text_files.py names,
confines and checks the files it may read and links them into a private folder; weights load as
safetensors only (`use_safetensors=True`). A tokenizer that still fails, even by a panic of the library, is
a UserError.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from longvideo.errors import UserError
from longvideo.models.text_files import (
    CLIP_FAMILY,
    T5_FAMILY,
    _read_model_type,
    _stage,
    model_files,
    resolve_folders,
    tokenizer_files,
)
from longvideo.models.weights import (
    umask_modes,
)

OUTPUTS = ("last_hidden_state", "pooled")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclass
class TextEncoderConfig:
    path: str = ""  # model folder (or pipeline folder); `from_pretrained(path)` overrides it
    max_length: int = 120  # tokens after padding/truncation: PixArt/EasyAnimate 120, OSP v1.2 512
    dtype: str = "float32"  # float32 | float16 | bfloat16 (short forms fp32/fp16/bf16 too)
    output: str = "last_hidden_state"  # or "pooled": CLIP's pooled output (B, D), for SD3-style models
    cache_size: int = 256  # prompts kept in the LRU embedding cache; 0 turns the cache off
    hidden_layer: int = -1  # which hidden state is the sequence output; -2 = penultimate (SD3's CLIP)

    def __post_init__(self) -> None:
        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise UserError(f"text encoder max_length must be a positive integer, got {self.max_length!r}")
        if not isinstance(self.cache_size, int) or self.cache_size < 0:
            raise UserError(f"text encoder cache_size must be an integer >= 0, got {self.cache_size!r}")
        if self.output not in OUTPUTS:
            raise UserError(f"text encoder output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.dtype not in DTYPES:
            raise UserError(f"text encoder dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.hidden_layer, int):
            raise UserError(f"text encoder hidden_layer must be an integer, got {self.hidden_layer!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int


def _one_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _is_library_failure(e: BaseException) -> bool:
    """An exception of a library reading a user's files: any Exception, or a Rust panic (pyo3's
    PanicException derives from BaseException); never Ctrl-C or an exit."""
    return isinstance(e, Exception) or type(e).__name__ == "PanicException"


def _model_class(model_type: str, archs: list[str], staged: Path, model_dir: Path) -> Any:
    import transformers

    if model_type in T5_FAMILY:
        return getattr(transformers, T5_FAMILY[model_type])
    if model_type in CLIP_FAMILY:
        if model_type == "clip_text_model" and any(a.endswith("WithProjection") for a in archs):
            return transformers.CLIPTextModelWithProjection
        return transformers.CLIPTextModel
    if model_type not in transformers.CONFIG_MAPPING or "vision" in model_type:
        raise UserError(f"{model_dir}: unsupported text encoder model_type {model_type!r}")
    try:
        config = transformers.AutoConfig.from_pretrained(staged, local_files_only=True)
    except Exception as e:  # transformers' own validation of the file: a bad folder, not a bug of ours
        msg = _one_line(e).replace(str(staged), str(model_dir))
        raise UserError(f"{model_dir / 'config.json'}: not a valid {model_type} config ({msg})") from None
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(
            f"{model_dir}: unsupported text encoder model_type {model_type!r} (encoder-decoder; "
            f"supported ones are {', '.join(T5_FAMILY)})"
        )
    return transformers.AutoModel


class TextEncoder:
    """A frozen `transformers` text encoder + tokenizer with fixed-length outputs and an embedding cache."""

    def __init__(self, model: Any, tokenizer: Any, cfg: TextEncoderConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else TextEncoderConfig()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        mtype = getattr(model.config, "model_type", "")
        self.is_clip = mtype in CLIP_FAMILY
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise UserError(
                    "the tokenizer has neither a pad nor an eos token, so prompts cannot be padded"
                )
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # real tokens first: CLIP's causal attention never sees padding
        max_pos = getattr(model.config, "max_position_embeddings", None)
        if isinstance(max_pos, int) and self.cfg.max_length > max_pos:
            raise UserError(
                f"text encoder max_length {self.cfg.max_length} exceeds the model's {max_pos} positions"
            )
        if self.cfg.output == "pooled" and not self.is_clip and getattr(model, "pooler", None) is None:
            raise UserError(f"output='pooled' needs a model with a pooled output (CLIP, BERT), not {mtype!r}")
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._hits = 0
        self._misses = 0
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        self._rows = getattr(emb, "num_embeddings", None)  # token ids must be < rows
        self._stage: tempfile.TemporaryDirectory | None = None
        self._where = "the text encoder"

    def _check_vocabulary(self) -> None:
        """Every token id the tokenizer knows, and those a probe prompt gets (its special tokens), index the
        model's embedding table; a mismatched or crafted tokenizer fails here, not inside the model."""
        try:
            top = max(self.tokenizer.get_vocab().values(), default=0)
        except BaseException as e:
            if not _is_library_failure(e):
                raise
            raise UserError(f"the tokenizer in {self._where} fails: {_one_line(e)}") from None
        if self._rows is not None and top >= self._rows:
            raise UserError(
                f"the tokenizer in {self._where} has token id {top}, but the text encoder embeds only "
                f"{self._rows} tokens: a tokenizer of another model?"
            )
        self.tokenize(["a photo of a cat", "", "zqx \u00e9\u4e2d 123 !?"])  # an unknown word too

    # ---- loading / saving -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
        cfg: TextEncoderConfig | None = None,
        device: str | torch.device | None = None,
    ) -> TextEncoder:
        """Load from a local folder (see the module docstring for layouts); never downloads."""
        cfg = cfg if cfg is not None else TextEncoderConfig()
        path = path if path not in (None, "") else cfg.path
        if not path:
            raise UserError("no text encoder folder given")
        cfg = dataclasses.replace(cfg, path=str(path))
        model_dir, tok_dir = resolve_folders(path, tokenizer_path)
        model_type, archs = _read_model_type(model_dir)
        stage = _stage(model_files(model_dir), tokenizer_files(tok_dir))
        staged_model, staged_tok = Path(stage.name) / "model", Path(stage.name) / "tokenizer"

        def mend(e: BaseException) -> str:  # the user's folders in messages, not the private links
            msg = _one_line(e).replace(str(staged_model), str(model_dir))
            return msg.replace(str(staged_tok), str(tok_dir))

        model_cls = _model_class(model_type, archs, staged_model, model_dir)
        import transformers

        # Anything transformers raises while reading a user's folder is a bad folder, not a bug of ours; so is
        # a panic of the tokenizers library (pyo3's PanicException, a BaseException).
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(staged_tok, local_files_only=True)
        except BaseException as e:
            if not _is_library_failure(e):
                raise
            raise UserError(f"cannot load the tokenizer in {tok_dir}: {mend(e)}") from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar is noise around our one-line errors
        try:
            model, info = model_cls.from_pretrained(
                staged_model,
                local_files_only=True,
                use_safetensors=True,
                dtype=cfg.torch_dtype,
                output_loading_info=True,
            )
        except Exception as e:
            raise UserError(f"cannot load the {model_type} text encoder in {model_dir}: {mend(e)}") from None
        # transformers fills weights missing from the checkpoint with random ones and only warns: refuse that
        # (a BERT saved without its pooler is fine unless the pooled output is asked for).
        missing = sorted(
            k for k in info.get("missing_keys", ()) if cfg.output == "pooled" or not k.startswith("pooler.")
        )
        if missing:
            raise UserError(
                f"{model_dir}: the checkpoint lacks {len(missing)} weights of the {model_type} text encoder "
                f"(e.g. {missing[0]}); wrong folder or model_type?"
            )
        if device is not None:
            model = model.to(device)
        enc = cls(model, tokenizer, cfg)
        enc._stage = stage  # the tokenizer may read its files again (save_pretrained copies spiece.model)
        enc._where = str(tok_dir)
        enc._check_vocabulary()
        return enc

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write `folder/text_encoder/` (config.json + model.safetensors) and `folder/tokenizer/`."""
        folder = Path(folder)
        self.model.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        for sub in ("text_encoder", "tokenizer"):
            umask_modes(folder / sub)  # transformers writes model.safetensors 0600
        return folder

    # ---- properties ------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Feature size D of what `encode` returns."""
        c = self.model.config
        if self.cfg.output == "pooled" and hasattr(self.model, "text_projection"):
            return int(c.projection_dim)
        return int(getattr(c, "hidden_size", None) or c.d_model)

    @property
    def max_length(self) -> int:
        return self.cfg.max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device) -> TextEncoder:
        """Move the model; the cache is emptied (its tensors live on the old device)."""
        self.model.to(device)
        self._cache.clear()
        return self

    # ---- encoding --------------------------------------------------------------------------------------
    @staticmethod
    def _check_prompts(prompts: Any) -> list[str]:
        if isinstance(prompts, str):
            return [prompts]
        if not isinstance(prompts, Sequence):
            raise UserError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise UserError(f"prompt {i} is not a string but {type(p).__name__}")
        return list(prompts)

    def tokenize(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (B, L), mask (B, L) long): "max_length" padding + truncation, special tokens added."""
        prompts = self._check_prompts(prompts)
        try:
            tok = self.tokenizer(
                prompts,
                padding="max_length",
                truncation=True,
                max_length=self.cfg.max_length,
                return_tensors="pt",
            )
        except BaseException as e:  # a crafted tokenizer.json can make the library panic at encode time
            if not _is_library_failure(e):
                raise
            raise UserError(f"the tokenizer in {self._where} fails on a prompt: {_one_line(e)}") from None
        ids, mask = tok["input_ids"].long(), tok["attention_mask"].long()
        lo, hi = (int(ids.min()), int(ids.max())) if ids.numel() else (0, 0)
        if self._rows is not None and not (lo >= 0 and hi < self._rows):
            bad = hi if hi >= self._rows else lo
            raise UserError(
                f"the tokenizer in {self._where} gives token id {bad}, but the text encoder embeds only "
                f"{self._rows} tokens: a tokenizer of another model?"
            )
        # A prompt with no tokens at all (an empty prompt under a tokenizer that adds no special tokens)
        # keeps its first position, so no attention, here or in the DiT, sees an empty set of keys.
        mask[mask.sum(1) == 0, 0] = 1
        return ids, mask

    @torch.no_grad()  # not inference_mode: a DiT trained on cached embeddings must be able to save them
    def _forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        dev = self.device
        ids, mask = ids.to(dev), mask.to(dev)
        kwargs: dict[str, Any] = {"input_ids": ids, "return_dict": True}
        if not self.is_clip:
            kwargs["attention_mask"] = mask
        want_layer = self.cfg.output == "last_hidden_state" and self.cfg.hidden_layer != -1
        if want_layer:
            kwargs["output_hidden_states"] = True
        out = self.model(**kwargs)
        if self.cfg.output == "pooled":
            h = out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output
        elif want_layer:
            try:
                h = out.hidden_states[self.cfg.hidden_layer]
            except IndexError:
                n = len(out.hidden_states)
                raise UserError(
                    f"hidden_layer {self.cfg.hidden_layer} is out of range ({n} hidden states)"
                ) from None
        else:
            h = out.last_hidden_state
        return h, mask

    def encode(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of `prompts` (a list; a single string counts as a batch of one).

        Returns `hidden` (B, max_length, D) in the model's dtype on its device (`(B, D)` for
        `output="pooled"`) and `mask` (B, max_length) long, 1 on real tokens (special ones included),
        0 on padding. Prompts in the cache are not recomputed; the others are encoded in one batch.
        """
        prompts = self._check_prompts(prompts)
        L = self.cfg.max_length
        if not prompts:
            shape = (0, self.dim) if self.cfg.output == "pooled" else (0, L, self.dim)
            return (
                torch.empty(shape, dtype=self.dtype, device=self.device),
                torch.empty(0, L, dtype=torch.long, device=self.device),
            )
        size = self.cfg.cache_size
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        todo: dict[str, None] = {}  # distinct prompts to compute, in order of first appearance
        for p in prompts:
            if p in found or p in todo:  # a repeat within this batch is computed once
                self._hits += 1
            elif size and p in self._cache:
                self._cache.move_to_end(p)
                found[p] = self._cache[p]
                self._hits += 1
            else:
                todo[p] = None
                self._misses += 1
        if todo:
            h, m = self._forward(list(todo))
            for i, p in enumerate(todo):
                entry = (h[i].clone(), m[i].clone())  # own storage: the cache must not pin the whole batch
                found[p] = entry
                if size:
                    self._cache[p] = entry
            while len(self._cache) > size:
                self._cache.popitem(last=False)
        hidden = torch.stack([found[p][0] for p in prompts])
        mask = torch.stack([found[p][1] for p in prompts])
        return hidden, mask

    __call__ = encode

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, self.cfg.cache_size, len(self._cache))

    def clear_cache(self) -> None:
        self._cache.clear()
        self._hits = self._misses = 0
