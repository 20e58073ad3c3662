"""What the DiT trainer reads: latents (scaled for the DiT) and caption states, batch by batch.

Global batch `step` is a function of (data seed, step) only: for clips of one size, position p = step * B + j
of an endless stream of epochs, each a permutation seeded by (seed, epoch); for a manifest of many sizes,
the bucket sampler's batch `step` (data/buckets.py). Resuming at step s therefore needs nothing but s.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from longvideo.data.latent_cache import LatentCache, build_latent_cache, shapes_items
from longvideo.errors import UserError
from longvideo.models.text import TextEncoder, TextEncoderConfig
from longvideo.models.vae.io import load_vae
from longvideo.models.vae.model import CausalVAE
from longvideo.parallel import DistEnv, barrier
from longvideo.pipelines.inputs import scale_latents

NEW_TEXT_SEED = 0  # "new:shapes" is one fixed encoder, whatever the run's seed


def make_text_encoder(spec: str, max_length: int, dim: int, init: str = "") -> TextEncoder:
    """ "auto": the `init` pipeline's text encoder (a DiT trained in stages keeps the encoder it learnt to
    read), or "new:shapes" without init; "new:shapes": the shapes-world T5 (pipelines/tiny.py) built from
    the fixed seed NEW_TEXT_SEED, the same in every run; otherwise a local folder (encoder or pipeline)."""
    if spec == "auto":
        if not init:
            spec = "new:shapes"
        else:
            from longvideo.pipelines.folder import resolve_pipeline

            spec = str(resolve_pipeline(init))
    elif spec == "new:shapes" and init:
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
    return TextEncoder.from_pretrained(spec, cfg=TextEncoderConfig(max_length=max_length))


class LatentBatches:
    """Latents + text states for the trainer; the VAE and text encoder are frozen and live here."""

    def __init__(self, cfg, env: DistEnv, vae: CausalVAE, text_encoder: TextEncoder):
        self.cfg, self.env, self.vae, self.text_encoder = cfg, env, vae.eval(), text_encoder
        d = cfg.data
        self.cache: LatentCache | None = None
        self.items = self.sampler = None
        if d.source == "shapes":
            items = shapes_items(d.shapes, d.seed)
            if d.cache:
                source = {"kind": "shapes", "config": asdict(d.shapes), "seed": d.seed}
                if env.main:
                    build_latent_cache(d.cache, vae, items, d.num_videos, source)
                barrier()
                self.cache = LatentCache(d.cache)
                if cfg.latent_stats and not vae.cfg.latents_mean:
                    vae.cfg.latents_mean, vae.cfg.latents_std = self.cache.channel_stats()
            else:
                self.items = items
            self.size = d.num_videos
        else:  # a manifest of videos/images in several sizes: bucketed, encoded batch by batch
            from longvideo.data.buckets import BucketSampler
            from longvideo.data.manifest import ManifestConfig, ManifestDataset

            if not d.manifest:
                raise UserError("data.source 'manifest' needs data.manifest (a manifest.jsonl)")
            mcfg = ManifestConfig(fps=d.fps or None, seed=d.seed)
            if d.buckets:
                mcfg.buckets = [list(b) for b in d.buckets]
            self.dataset = ManifestDataset(d.manifest, mcfg)
            per_rank = cfg.batch_size // env.world_size
            self.sampler = BucketSampler(self.dataset.buckets, per_rank, env.world_size, seed=d.seed)
            self.size = len(self.dataset)
        self._text: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.empty_text = self.text("")

    def text(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (L, D) float32, mask (L,)) of one caption, computed once."""
        if caption not in self._text:
            h, m = self.text_encoder.encode([caption])
            self._text[caption] = (h[0].float().cpu(), m[0].cpu())
        return self._text[caption]

    def global_batch(self, step: int) -> list[int]:
        """Item indices of global batch `step` (B = cfg.batch_size; rank r takes slice r of B / world)."""
        if self.sampler is not None:
            return self.sampler.batch_at(step)[1]
        b, n = self.cfg.batch_size, self.size
        out = []
        for p in range(step * b, (step + 1) * b):
            epoch, i = divmod(p, n)
            out.append(int(_permutation(self.cfg.data.seed, epoch, n)[i]))
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
        every = self.cfg.data.image_every
        if every > 0 and step % every == 0:
            z = z[:, :, :1]  # a causal VAE's latent frame 0 is the first frame's image latent, exactly
        states = [self.text(c) for c in captions]
        text = torch.stack([s for s, _ in states]).clone()
        mask = torch.stack([m for _, m in states]).clone()
        return scale_latents(z, self.vae.cfg), text, mask


_PERMS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (seed, epoch, n)
    if key not in _PERMS:
        if len(_PERMS) > 4:
            _PERMS.clear()
        _PERMS[key] = np.random.default_rng([seed, epoch, 11]).permutation(n)
    return _PERMS[key]


def make_batches(cfg, env: DistEnv) -> LatentBatches:
    if cfg.batch_size % (env.world_size * cfg.grad_accum):
        raise UserError(
            f"batch_size {cfg.batch_size} must be a multiple of world size x grad_accum "
            f"({env.world_size} x {cfg.grad_accum})"
        )
    vae = load_vae(cfg.vae).to(env.device)
    text_encoder = make_text_encoder(cfg.text_encoder, cfg.text_max_length, cfg.text_dim, cfg.init)
    return LatentBatches(cfg, env, vae, text_encoder)
