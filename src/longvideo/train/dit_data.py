"""What the DiT trainer reads: latents (scaled for the DiT) and caption states, batch by batch.

Global batch `step` is a function of (data seed, step) only: for clips of one size, position p = step * B + j
of an endless stream of epochs, each a permutation seeded by (seed, epoch); for a manifest of many sizes,
the bucket sampler's batch `step` (data/buckets.py). Resuming at step s therefore needs nothing but s.

The trainer builds the frozen VAE and text encoder (`make_text_encoder`) and hands them in; this module
never changes them.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from longvideo.errors import UserError
from longvideo.models.text import TextEncoder, TextEncoderConfig
from longvideo.models.vae.model import CausalVAE
from longvideo.parallel import barrier
from longvideo.pipelines.inputs import scale_latents
from longvideo.train.dit_config import DiTDataConfig
from longvideo.train.latent_cache import LatentCache, build_latent_cache, shapes_items

NEW_TEXT_SEED = 0  # "new:shapes" is one fixed encoder, whatever the run's seed


def make_text_encoder(spec: str, max_length: int, dim: int, init: Path | None = None) -> TextEncoder:
    """ "auto": the `init` pipeline's text encoder (a DiT trained in stages keeps the encoder it learnt to
    read), or "new:shapes" without init; "new:shapes": the shapes-world T5 (pipelines/tiny.py) of width
    `dim` built from the fixed seed NEW_TEXT_SEED, the same in every run; otherwise a local folder (encoder
    or pipeline) or a bundled pipeline name. `init`: the init pipeline's folder, already resolved."""
    if spec == "auto":
        spec = "new:shapes" if init is None else str(init)
    elif spec == "new:shapes" and init is not None:
        raise UserError(
            "text_encoder 'new:shapes' with init: the init model learnt its own text encoder; use 'auto' "
            "(the init's) or that encoder's folder"
        )
    if spec == "new:shapes":
        from longvideo.pipelines.tiny import tiny_text_encoder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(NEW_TEXT_SEED)
            return tiny_text_encoder(max_length=max_length, dim=dim)
    if spec.startswith("new:"):
        raise UserError(f"text_encoder {spec!r}: the only built-in one is 'new:shapes'")
    if not Path(spec).exists():
        from longvideo.pipelines.folder import resolve_pipeline

        spec = str(resolve_pipeline(spec))  # a bundled name, or a one-line error
    return TextEncoder.from_pretrained(spec, cfg=TextEncoderConfig(max_length=max_length))


class LatentBatches:
    """Latents + text states of global batch `step`, this data-parallel rank's share of it.

    cfg: the data config; batch_size: the global batch; dp_size: data-parallel ranks (the bucket sampler
    splits a batch over them); main: this process builds the latent cache (others wait at a barrier)."""

    def __init__(self, cfg: DiTDataConfig, batch_size: int, dp_size: int, vae: CausalVAE,
                 text_encoder: TextEncoder, main: bool = True):  # fmt: skip
        self.cfg, self.batch_size, self.vae, self.text_encoder = cfg, batch_size, vae.eval(), text_encoder
        self.cache: LatentCache | None = None
        self.items = self.sampler = None
        if cfg.source == "shapes":
            items = shapes_items(cfg.shapes, cfg.seed)
            if cfg.cache:
                source = {"kind": "shapes", "config": asdict(cfg.shapes), "seed": cfg.seed}
                if main:
                    build_latent_cache(cfg.cache, vae, items, cfg.num_videos, source)
                barrier()
                self.cache = LatentCache(cfg.cache)
            else:
                self.items = items
            self.size = cfg.num_videos
        else:  # a manifest of videos/images in several sizes: bucketed, encoded batch by batch
            from longvideo.data.buckets import BucketSampler
            from longvideo.data.manifest import ManifestConfig, ManifestDataset

            mcfg = ManifestConfig(fps=cfg.fps or None, seed=cfg.seed)
            if cfg.buckets:
                mcfg.buckets = [list(b) for b in cfg.buckets]
            self.dataset = ManifestDataset(cfg.manifest, mcfg)
            self.sampler = BucketSampler(self.dataset.buckets, batch_size // dp_size, dp_size, seed=cfg.seed)
            self.size = len(self.dataset)
        self._text: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.empty_text = self.text("")

    def channel_stats(self) -> tuple[list[float], list[float]] | None:
        """Per-channel (mean, std) of the cached latents; None without a cache."""
        return None if self.cache is None else self.cache.channel_stats()

    def text(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (L, D) float32, mask (L,)) of one caption, computed once."""
        if caption not in self._text:
            h, m = self.text_encoder.encode([caption])
            self._text[caption] = (h[0].float().cpu(), m[0].cpu())
        return self._text[caption]

    def global_batch(self, step: int) -> list[int]:
        """Item indices of global batch `step` (B = batch_size; dp rank r takes slice r of B / dp_size)."""
        if self.sampler is not None:
            return self.sampler.batch_at(step)[1]
        b, n = self.batch_size, self.size
        out = []
        for p in range(step * b, (step + 1) * b):
            epoch, i = divmod(p, n)
            out.append(int(_permutation(self.cfg.seed, epoch, n)[i]))
        return out

    def load(self, step: int, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents (b, C, K, h, w) scaled, text (b, L, D), mask (b, L)) of these items."""
        if self.cache is not None:
            z = torch.stack([self.cache[i][0] for i in indices])
            captions = [self.cache.rows[i]["caption"] for i in indices]
        else:
            if self.sampler is not None:  # clip starts drawn per (item, epoch)
                epoch = self.sampler.batch_at(step)[0]
                got = [(r["pixels"], r) for r in (self.dataset[(i, epoch)] for i in indices)]
            else:
                got = [self.items(i) for i in indices]
            with torch.no_grad():
                x = torch.stack([px for px, _ in got]).to(next(self.vae.parameters()).device)
                z = self.vae.encode(x).mode().float().cpu()
            captions = [row["caption"] for _, row in got]
        every = self.cfg.image_every
        if every > 0 and step % every == 0:
            z = z[:, :, :1]  # a causal VAE's latent frame 0 is the first frame's image latent, exactly
        states = [self.text(c) for c in captions]
        text = torch.stack([s for s, _ in states])
        mask = torch.stack([m for _, m in states])
        return scale_latents(z, self.vae.cfg), text, mask


_PERMS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (seed, epoch, n)
    if key not in _PERMS:
        if len(_PERMS) > 4:
            _PERMS.clear()
        _PERMS[key] = np.random.default_rng([seed, epoch, 11]).permutation(n)
    return _PERMS[key]
