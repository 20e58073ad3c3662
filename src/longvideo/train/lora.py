"""LoRA fine-tuning of the video DiT, through `peft`.

    cfg = LoRAConfig(rank=16)                       # attention projections; feed_forward=True adds the FFN
    model = add_lora(build_dit(...), cfg)           # in place; only the adapters train
    out = model(x, t, text, text_mask, cond)        # called exactly as before
    save_lora("run/lora", model, cfg)               # adapter_config.json + adapter_model.safetensors
    cfg, sd = load_lora_folder("run/lora"); load_lora(add_lora(base, cfg), sd)
    plain = merge_lora(model)                       # adapters folded in: the original keys, a plain VideoDiT

peft wraps each targeted `nn.Linear` in place (`to_q` -> `to_q.base_layer` + `to_q.lora_A/lora_B`), so the
model keeps its class and its forward signature. We resolve the targets to full module names ourselves and
hand peft one anchored regex of exactly those names: peft's own suffix matching would also accept modules
we did not mean (e.g. a Conv3d called `proj`), and a target that matches nothing fails here with a clear
message. Adapter weights are saved under the names peft itself uses on disk
(`transformer_blocks.0.attn1.to_q.lora_A.weight`, no adapter name), so they stay stable across peft versions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from longvideo.errors import UserError

ATTN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every Attention / MotionAttention / ParallelAttention
FF_TARGETS = ["ff.net.0.proj", "ff.net.2"]  # FeedForward of the blocks (and of the motion modules)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "longvideo-lora"
_ADAPTER = "default"  # peft's adapter name; we use one adapter per model and keep it out of saved keys


@dataclass
class LoRAConfig:
    rank: int = 0  # 0 = LoRA off (add_lora leaves the model untouched)
    alpha: float | None = None  # update scale is alpha / rank; None = rank (scale 1)
    dropout: float = 0.0  # on the adapter's input, training only
    # module-name suffixes (`to_out.0` matches `...attn1.to_out.0`) or regexes over the full name
    targets: list[str] = field(default_factory=lambda: list(ATTN_TARGETS))
    feed_forward: bool = False  # also adapt the feed-forward Linears (FF_TARGETS)

    def all_targets(self) -> list[str]:
        return [*self.targets, *(FF_TARGETS if self.feed_forward else [])]

    def validate(self) -> LoRAConfig:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise UserError(f"lora: rank must be an integer >= 0 (0 = off), got {self.rank!r}")
        if self.alpha is not None and not (_is_number(self.alpha) and self.alpha > 0):
            raise UserError(f"lora: alpha must be > 0 (or null = rank), got {self.alpha!r}")
        if not (_is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise UserError(f"lora: dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.targets, list):
            raise UserError(f"lora: targets must be a list of names, got {self.targets!r}")
        if self.rank and not self.all_targets():
            raise UserError("lora: targets is empty (give module-name suffixes such as 'to_q')")
        for t in self.all_targets():
            if not isinstance(t, str) or not t:
                raise UserError(f"lora: targets must be non-empty strings, got {t!r}")
            try:
                re.compile(t)
            except re.error as e:
                raise UserError(f"lora: target {t!r} is not a valid suffix or regex ({e})") from None
        return self


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _matches(target: str, name: str) -> bool:
    return name == target or name.endswith("." + target) or re.fullmatch(target, name) is not None


def _tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer  # peft imports slowly: only when used

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def add_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Wrap the targeted Linears of `model` with LoRA adapters, in place, and freeze everything else.

    B starts at zero, so the model computes exactly what it did before. rank 0 returns `model` untouched
    (nothing frozen). Every target must match at least one Linear; non-Linear matches are skipped."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg.validate()
    if cfg.rank == 0:
        return model
    if _tuner_layers(model):
        raise UserError("lora: this model already has LoRA adapters (add_lora was called twice?)")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names: list[str] = []
    for t in cfg.all_targets():
        hits = [n for n in linears if _matches(t, n)]
        if not hits:
            raise UserError(f"lora: target {t!r} matches no Linear layer of {type(model).__name__}")
        names += [n for n in hits if n not in names]
    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    peft_cfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.rank if cfg.alpha is None else cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=pattern,
        bias="none",
    )
    inject_adapter_in_model(peft_cfg, model, adapter_name=_ADAPTER)
    for n, p in model.named_parameters():  # peft already does this; we rely on it, so say it here
        p.requires_grad_(_is_lora_param(n))
    return model


def _is_lora_param(name: str) -> bool:
    return f".lora_A.{_ADAPTER}." in name or f".lora_B.{_ADAPTER}." in name


def _saved_key(name: str) -> str:
    """`...to_q.lora_A.default.weight` -> `...to_q.lora_A.weight` (peft's on-disk naming)."""
    return name.replace(f".lora_A.{_ADAPTER}.", ".lora_A.").replace(f".lora_B.{_ADAPTER}.", ".lora_B.")


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights only (detached, contiguous, on CPU), keyed `<module>.lora_A.weight` /
    `<module>.lora_B.weight`. Empty for a model without adapters."""
    return {
        _saved_key(n): p.detach().contiguous().cpu() for n, p in model.named_parameters() if _is_lora_param(n)
    }


def load_lora(model: nn.Module, sd: dict[str, Tensor]) -> nn.Module:
    """Copy adapter weights from `lora_state_dict` into a model that went through `add_lora` with the same
    config. Missing or unexpected keys and shape mismatches (another rank or base model) are UserErrors."""
    params = {_saved_key(n): p for n, p in model.named_parameters() if _is_lora_param(n)}
    missing, unexpected = sorted(params.keys() - sd.keys()), sorted(sd.keys() - params.keys())
    if missing or unexpected:
        raise UserError(
            f"lora: adapter weights do not fit this model: {len(missing)} missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]}); same base model and LoRA config?"
        )
    for k, p in params.items():
        if p.shape != sd[k].shape:
            raise UserError(f"lora: {k} has shape {tuple(sd[k].shape)}, the model {tuple(p.shape)}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(sd[k])
    return model


def save_lora(folder: str | Path, model: nn.Module, cfg: LoRAConfig) -> Path:
    """Write `adapter_config.json` (our LoRAConfig) and `adapter_model.safetensors` into `folder`, each
    under a temporary name first and moved into place with os.replace: a crash never leaves a torn file."""
    sd = lora_state_dict(model)
    if not sd:
        raise UserError("lora: the model has no LoRA adapters to save")
    bad = [k for k, v in sd.items() if k.endswith(".lora_A.weight") and v.shape[0] != cfg.rank]
    if bad:
        raise UserError(f"lora: adapter rank {sd[bad[0]].shape[0]} differs from the config's {cfg.rank}")
    injected = getattr(model, "peft_config", {}).get(_ADAPTER)  # what add_lora gave peft
    alpha = cfg.rank if cfg.alpha is None else cfg.alpha
    if injected is not None and injected.lora_alpha != alpha:
        raise UserError(f"lora: adapter alpha {injected.lora_alpha} differs from the config's {alpha}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": 1, **asdict(cfg)}
    _atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(sd, tmp, metadata={"format": FORMAT}))
    _atomic_write(folder / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=1) + "\n"))
    return folder


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_lora_folder(folder: str | Path) -> tuple[LoRAConfig, dict[str, Tensor]]:
    """Read a `save_lora` folder back: (validated config, adapter state dict for `load_lora`)."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise UserError(f"lora: {p} not found (not a LoRA folder written by save_lora?)")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"lora: {cfg_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.pop("format", None) != FORMAT:
        raise UserError(f"lora: {cfg_path} is not a {FORMAT} config (a peft adapter? convert it first)")
    meta.pop("version", None)
    known = {f.name for f in fields(LoRAConfig)}
    if unknown := sorted(meta.keys() - known):
        raise UserError(f"lora: {cfg_path}: unknown keys {unknown}")
    cfg = LoRAConfig(**meta).validate()
    return cfg, load_file(weights_path)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base Linear (W += scale * B @ A) and put the plain Linear back, in place.

    The result has exactly the state-dict keys of the model before add_lora, loads into a plain VideoDiT
    and computes the same function (to float rounding). Parameters frozen by add_lora stay frozen
    (requires_grad=False); call `model.requires_grad_(True)` to train the merged model in full."""
    for name, layer in _tuner_layers(model):
        layer.merge(safe_merge=True)  # safe: raises on NaN/inf instead of corrupting the base weight
        model.set_submodule(name, layer.get_base_layer())
    if hasattr(model, "peft_config"):  # peft's bookkeeping attribute; a plain model has none
        del model.peft_config
    return model
