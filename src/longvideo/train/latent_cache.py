"""Precomputed VAE latents for DiT training: encode once, train many epochs without the VAE.

    DIR/cache.json                  what the cache holds: source, VAE config, count, shard size
    DIR/shard_000000.safetensors    {"latents": (N, C, K, h, w)} raw mode latents (unscaled), float16
    DIR/shard_000000.jsonl          one row per latent: caption (+ the source's metadata)

Latents are stored unscaled, so a change of the VAE's latent statistics does not need a re-encode. Each
shard is written under a temporary name and renamed, so an interrupted build resumes at the first missing
shard; `cache.json` is compared on a rerun and a cache of other settings is refused, never mixed, except that
a cache may grow: asking for more items than it holds encodes only the new ones (items depend only on i). The
identity includes a digest of the encoder's weights: a retrained VAE of the same config gives other latents
(a decoder-only fine-tune does not, and keeps its caches).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from longvideo.data.shapes import ShapesConfig, sample_video, video_rng
from longvideo.errors import UserError
from longvideo.models.vae.model import CausalVAE

Item = tuple[torch.Tensor, dict]  # (pixels (3, T, H, W) in [-1, 1], row with at least "caption")


def shapes_items(cfg: ShapesConfig, seed: int) -> Callable[[int], Item]:
    """Item i of the shapes world (frames from 0, so the caption's motion holds from the first frame)."""

    def item(i: int) -> Item:
        video = sample_video(cfg, video_rng(seed, i))
        row = {"caption": video.caption, "index": i, "background": video.background}
        return video.render_tensor(cfg.num_frames), row

    return item


CACHE_FORMAT = 2
STATS = ("latents_mean", "latents_std")  # set from the cache itself, so not part of its identity


def encoder_digest(vae: CausalVAE) -> str:
    """sha256 of the weights that make latents (CausalVAE.LATENT_PATH), in key order."""
    h = hashlib.sha256()
    for k, v in sorted(vae.state_dict().items()):
        if k.split(".")[0] in CausalVAE.LATENT_PATH:
            h.update(k.encode())
            h.update(v.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def cache_identity(vae: CausalVAE, source: dict) -> dict:
    """What a cache's latents depend on: the items, the VAE's config and its encoder's weights."""
    cfg = {k: v for k, v in asdict(vae.cfg).items() if k not in STATS}
    return {"source": source, "vae": cfg, "encoder_sha256": encoder_digest(vae), "format": CACHE_FORMAT}


def build_latent_cache(
    out: str | Path,
    vae: CausalVAE,
    items: Callable[[int], Item],
    n: int,
    source: dict,
    shard_size: int = 256,
    batch: int = 16,
    progress: bool = True,
) -> Path:
    """Encode items 0..n-1 into shards under `out` (resumable). `source` describes the items (JSON) and is
    part of the identity check."""
    if n < 1 or shard_size < 1 or batch < 1:
        raise UserError("latent cache: n, shard_size and batch must be >= 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(
            f"latent cache {out} is a file, not a folder: give a folder (it is created if missing)"
        )
    out.mkdir(parents=True, exist_ok=True)
    info = cache_identity(vae, source) | {"n": n, "shard_size": shard_size}
    meta = out / "cache.json"
    if meta.exists():
        old = _read_info(meta)
        if old.get("format") != CACHE_FORMAT:
            raise UserError(f"{out} holds a latent cache of an older format (no encoder digest): rebuild it")
        if old | {"n": n} != info:
            same_encoder = old.get("encoder_sha256") == info["encoder_sha256"]
            what = "other settings" if same_encoder else "another VAE encoder"
            raise UserError(f"{out} holds a latent cache of {what}: choose another folder")
        if n < old["n"]:
            raise UserError(
                f"{out} holds a latent cache of {old['n']} items, more than the {n} asked: "
                "ask for all of them or choose another folder"
            )
        if n > old["n"]:  # grow: items depend only on i, so the first old["n"] latents stay
            _grow(out, old["n"], shard_size)
            _atomic_write_text(meta, json.dumps(info, indent=1))
    else:
        _atomic_write_text(meta, json.dumps(info, indent=1))
    shards = range((n + shard_size - 1) // shard_size)
    bar = tqdm(total=n, desc="encode latents", unit="clip", disable=not progress)
    vae = vae.eval()
    for s in shards:
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        name = out / f"shard_{s:06d}"
        if name.with_suffix(".safetensors").exists():
            bar.update(hi - lo)
            continue
        latents, rows = [], []
        for b in range(lo, hi, batch):
            got = [items(i) for i in range(b, min(hi, b + batch))]
            with torch.no_grad():
                z = vae.encode(torch.stack([x for x, _ in got])).mode()
            latents.append(z.to(torch.float16))
            rows += [r for _, r in got]
            bar.update(len(got))
        tmp = name.with_name(name.name + f".tmp{os.getpid()}")
        _atomic_write_text(name.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
        save_file({"latents": torch.cat(latents).contiguous()}, str(tmp))
        os.replace(tmp, name.with_suffix(".safetensors"))  # last: its presence marks a complete shard
    bar.close()
    return out


def _grow(out: Path, old_n: int, shard_size: int) -> None:
    """Make room for more items: a last shard that was not full is removed (the marker first), to be encoded
    again with its new items; the full shards stay. Done before cache.json names the new count, so a crash
    in between leaves a valid cache of the old count missing one shard (a rerun encodes it)."""
    if old_n % shard_size:
        name = out / f"shard_{old_n // shard_size:06d}"
        name.with_suffix(".safetensors").unlink(missing_ok=True)
        name.with_suffix(".jsonl").unlink(missing_ok=True)


class LatentCache(torch.utils.data.Dataset):
    """The cache as a dataset: item i -> (latents (C, K, h, w) float32, caption). Loads every shard into
    memory: the cache is float16 latents, small beside the videos they stand for."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        meta = folder / "cache.json"
        if not meta.is_file():
            raise UserError(f"no latent cache at {str(folder)!r} (expected cache.json)")
        info = _read_info(meta)
        files = sorted(folder.glob("shard_*.safetensors"))
        expected = (info["n"] + info["shard_size"] - 1) // info["shard_size"]
        if len(files) != expected:
            raise UserError(f"latent cache {folder} is incomplete: {len(files)} of {expected} shards")
        self.info = info
        self.latents = torch.cat([_read_shard(f) for f in files])
        self.rows: list[dict] = []
        for f in files:
            self.rows += [json.loads(line) for line in f.with_suffix(".jsonl").read_text().splitlines()]
        if len(self.rows) != len(self.latents):
            raise UserError(f"latent cache {folder}: {len(self.rows)} rows for {len(self.latents)} latents")

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.latents[i].float(), self.rows[i]["caption"]

    def channel_stats(self, limit: int = 4096) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of (up to `limit`) latents: for VAEConfig.latents_mean / latents_std."""
        z = self.latents[:limit].float().transpose(0, 1).flatten(1)
        return z.mean(1).tolist(), z.std(1).tolist()

    def captions(self) -> Sequence[str]:
        return [r["caption"] for r in self.rows]


def _read_info(meta: Path) -> dict:
    """cache.json, checked: a file that is not a cache's is a UserError naming it, not a KeyError."""
    try:
        info = json.loads(meta.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"{meta} is corrupt ({type(e).__name__}): remove the cache folder to rebuild it"
        ) from None
    ok = isinstance(info, dict) and all(
        isinstance(info.get(k), int) and not isinstance(info.get(k), bool) and info[k] >= 1
        for k in ("n", "shard_size")
    )
    if not ok:
        raise UserError(
            f"{meta} is not a latent cache's (no n / shard_size): remove the folder to rebuild it"
        )
    return info


def _read_shard(path: Path) -> torch.Tensor:
    try:
        return load_file(str(path))["latents"]
    except (OSError, KeyError, SafetensorError) as e:
        raise UserError(
            f"latent cache shard {path} is corrupt ({type(e).__name__}): delete it to re-encode it"
        ) from None


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
