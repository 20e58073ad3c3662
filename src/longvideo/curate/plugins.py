"""Model-backed steps as plug-ins: aesthetic, watermark, caption, and the frame embedder for stitching.

No pretrained weights for these can be downloaded here (reference/data_eval.md §0), so each takes what the
user has, named by a spec in `PluginConfig`:

- a local transformers folder (loaded with `local_files_only=True`; nothing is ever downloaded):
  - embedder: any vision model (CLIP/SigLIP: `get_image_features`; ViT/DINO: pooled or CLS output);
  - aesthetic: such a CLIP folder plus `aesthetic_head.safetensors`, a stack of Linear layers applied in
    key order to the unit-length image embedding (the LAION "improved aesthetic predictor" layout:
    layers.0, .2, .4, .6, .7 with no activations in between);
  - watermark: an image-classification folder; the score is the probability of `watermark_label`;
  - caption: an image-text-to-text folder; four frames tiled 2x2 into one image, `caption_prompt`.
- `py:package.module:factory`: `factory(cfg: PluginConfig)` returns the callable (any model, any library);
- `hist` (embedder only): a weight-free HSV-histogram embedder; crude, but it tells a jump cut inside one
  scene (same colours) from a cut to another scene.

A step that is asked for without a spec is a one-line UserError before any work starts (`check_plugins`).
Signatures, frames being uint8 (N, H, W, 3) RGB:
    embedder(frames) -> float (N, D), rows of unit length
    aesthetic(frames) -> float        watermark(frames) -> float in [0, 1]        caption(frames) -> str
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from longvideo.curate.config import CurateConfig, PluginConfig
from longvideo.errors import UserError

# step name -> PluginConfig field holding its spec
STEP_PLUGIN = {"stitch": "embedder", "aesthetic": "aesthetic", "watermark": "watermark", "caption": "caption"}
AESTHETIC_HEAD = "aesthetic_head.safetensors"


def check_plugins(cfg: CurateConfig) -> None:
    """Fail fast (UserError, one line) for a plugin step without a usable spec; loads no model."""
    for step, kind in STEP_PLUGIN.items():
        if cfg.has(step):
            _check_spec(step, kind, getattr(cfg.plugins, kind))


def _check_spec(step: str, kind: str, spec: str) -> None:
    if not spec:
        hint = " or 'hist' (weight-free)" if kind == "embedder" else ""
        raise UserError(
            f"step '{step}' needs a model: set plugins.{kind}=DIR (a local transformers model folder; "
            f"nothing is downloaded), py:module:factory{hint}"
        )
    if spec.startswith("py:") or (kind == "embedder" and spec == "hist"):
        return
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise UserError(f"plugins.{kind}: model folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise UserError(f"plugins.{kind}: {folder} has no config.json (expected a transformers model folder)")
    if kind == "aesthetic" and not (folder / AESTHETIC_HEAD).is_file():
        raise UserError(f"plugins.aesthetic: {folder} has no {AESTHETIC_HEAD} (the score head)")
    if not any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
        # why here: before the run creates its output folder (the load itself is in the workers)
        raise UserError(
            f"plugins.{kind}: {folder} has no model.safetensors (weights are read as safetensors only; "
            "convert a pytorch_model.bin with transformers' save_pretrained(safe_serialization=True))"
        )


def load_plugin(kind: str, cfg: PluginConfig) -> Callable[[np.ndarray], Any]:
    """Build the plugin named by `cfg.<kind>` (called once per worker process)."""
    spec = getattr(cfg, kind)
    _check_spec(kind, kind, spec)
    if spec.startswith("py:"):
        return _from_factory(kind, spec, cfg)
    if kind == "embedder" and spec == "hist":
        return hist_embed
    folder = Path(spec).expanduser()
    if kind == "embedder":
        return HFEmbedder(folder, cfg.device)
    if kind == "aesthetic":
        return HFAesthetic(folder, cfg.device)
    if kind == "watermark":
        return HFWatermark(folder, cfg.watermark_label, cfg.device)
    if kind == "caption":
        return HFCaptioner(folder, cfg.caption_prompt, cfg.caption_max_tokens, cfg.device)
    raise ValueError(f"unknown plugin kind {kind!r}")


def _from_factory(kind: str, spec: str, cfg: PluginConfig) -> Callable:
    module, _, attr = spec[3:].partition(":")
    if not module or not attr:
        raise UserError(f"plugins.{kind}: expected py:module:factory, got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"plugins.{kind}: cannot import {spec[3:]} ({e})") from None
    return factory(cfg)


def hist_embed(frames: np.ndarray) -> np.ndarray:
    """Weight-free embedder: HSV histogram (8 hue x 4 sat x 4 value), square-rooted and L2-normalised (so
    the dot product is the Bhattacharyya coefficient). frames (N, H, W, 3) uint8 -> (N, 128) float32."""
    out = []
    for rgb in frames:
        hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
        h = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
        v = np.sqrt(h / max(1.0, h.sum()))
        out.append(v / max(1e-12, np.linalg.norm(v)))
    return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------------- transformers plug-ins


def _load(folder: Path, auto: str, processor: str, device: str):
    """(processor, model) from a local folder, eval mode, on `device`; load errors become UserError."""
    import transformers

    try:
        proc = getattr(transformers, processor).from_pretrained(folder, local_files_only=True)
        load = getattr(transformers, auto).from_pretrained
        model = load(folder, local_files_only=True, use_safetensors=True)  # safetensors only: no pickles
    except (OSError, ValueError, KeyError) as e:
        msg = " ".join(str(e).split())[:200]
        raise UserError(f"cannot load a model from {folder} with {auto} ({msg})") from None
    return proc, model.eval().to(device)


class HFEmbedder:
    """Unit-length image embeddings from a transformers vision model folder."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        self.proc, self.model = _load(folder, "AutoModel", "AutoImageProcessor", device)
        self.device = device

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            px = self.proc(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)
            if hasattr(self.model, "get_image_features"):
                out = self.model.get_image_features(pixel_values=px)
            else:
                out = self.model(pixel_values=px)
            if not isinstance(out, torch.Tensor):  # transformers 5 returns model outputs here too
                pooled = getattr(out, "pooler_output", None)
                out = pooled if pooled is not None else out.last_hidden_state[:, 0]
            e = torch.nn.functional.normalize(out.float(), dim=-1)  # (N, D)
        return e.cpu().numpy()


class HFAesthetic:
    """Mean aesthetic score of the frames: image embedding -> `aesthetic_head.safetensors` Linear stack."""

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        from safetensors.torch import load_file

        self.embed = HFEmbedder(folder, device)
        state = load_file(str(folder / AESTHETIC_HEAD))
        # why: layers in numeric order of their prefix (layers.0, layers.2, ... layers.7), weight then bias
        prefixes = sorted({k.rsplit(".", 1)[0] for k in state}, key=_natural_key)
        self.layers = [(state[f"{p}.weight"].float(), state.get(f"{p}.bias")) for p in prefixes]
        if not self.layers:
            raise UserError(f"{folder / AESTHETIC_HEAD} holds no Linear layers")

    def __call__(self, frames: np.ndarray) -> float:
        import torch

        x = torch.from_numpy(self.embed(frames))  # (N, D) unit rows
        with torch.inference_mode():
            for w, b in self.layers:
                x = x @ w.T + (b.float() if b is not None else 0)
        return float(x.mean())


def _natural_key(s: str) -> list:
    return [int(p) if p.isdigit() else p for p in s.replace(".", " ").split()]


class HFWatermark:
    """Mean probability of the watermark label of an image-classification model over the frames."""

    def __init__(self, folder: Path, label: str, device: str = "cpu") -> None:
        self.proc, self.model = _load(folder, "AutoModelForImageClassification", "AutoImageProcessor", device)
        labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        if label.lower() not in labels:
            raise UserError(f"plugins.watermark: {folder} has no label {label!r} (labels: {sorted(labels)})")
        self.index = labels[label.lower()]
        self.device = device

    def __call__(self, frames: np.ndarray) -> float:
        import torch

        with torch.inference_mode():
            px = self.proc(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)
            p = self.model(pixel_values=px).logits.float().softmax(-1)[:, self.index]  # (N,)
        return float(p.mean())


class HFCaptioner:
    """One caption per clip from an image-text-to-text model: four frames tiled 2x2 into one image."""

    def __init__(self, folder: Path, prompt: str, max_tokens: int, device: str = "cpu") -> None:
        self.proc, self.model = _load(folder, "AutoModelForImageTextToText", "AutoProcessor", device)
        self.prompt, self.max_tokens, self.device = prompt, max_tokens, device

    def __call__(self, frames: np.ndarray) -> str:
        import torch
        from PIL import Image

        image = Image.fromarray(tile_2x2(frames))
        if getattr(self.proc, "chat_template", None):
            content = [{"type": "image"}, {"type": "text", "text": self.prompt}]
            messages = [{"role": "user", "content": content}]
            text = self.proc.apply_chat_template(messages, add_generation_prompt=True)
        else:
            text = self.prompt
        inputs = self.proc(images=image, text=text, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False)
        if not self.model.config.is_encoder_decoder:
            ids = ids[:, inputs["input_ids"].shape[1] :]  # why: decoder-only models echo the prompt
        return self.proc.batch_decode(ids, skip_special_tokens=True)[0].strip()


def tile_2x2(frames: np.ndarray) -> np.ndarray:
    """Four frames (picked uniformly from N >= 1) tiled into one (2H, 2W, 3) image."""
    idx = np.linspace(0, len(frames) - 1, 4).round().astype(int)
    f = frames[idx]  # (4, H, W, 3)
    return np.concatenate([np.concatenate(f[:2], axis=1), np.concatenate(f[2:], axis=1)], axis=0)
