"""Training-step speed of the three DiT block families at one fixed, equal size: forward + backward
tokens/s, ms per step and parameter count, one JSON line per family.

    python benchmarks/perf/bench_dit.py                                   # CPU, float32
    python benchmarks/perf/bench_dit.py --device cuda --dtype bfloat16    # GPU
    python benchmarks/perf/bench_dit.py --steps 1 --warmup 0              # a smoke run

The fixed config (override with flags): 4 layers, 4 heads x 96 (OSP v1.2's head size; full3d needs a
multiple of 6), D = 384, latents (B=2, C=4, T=8, H=16, W=16) with patch (1, 2, 2) -> 512 tokens per video,
text 32 tokens x 64. Every family keeps DiTConfig's defaults otherwise, so only the block layout differs:
motion (spatial attention + temporal motion module), full3d (attention over all tokens, 3D RoPE), parallel
(spatial + temporal + cross branches). A step is forward, a mean-square loss, backward; no optimizer.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from longvideo.models.dit import FAMILIES, DiTConfig, build_dit
from longvideo.models.weights import count_params

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def family_config(family: str, a: argparse.Namespace) -> DiTConfig:
    return DiTConfig(
        family=family,
        in_channels=a.latent[0],
        num_layers=a.layers,
        num_heads=a.heads,
        head_dim=a.head_dim,
        text_dim=a.text_dim,
    ).validate()


def bench_family(family: str, a: argparse.Namespace) -> dict:
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    cfg = family_config(family, a)
    torch.manual_seed(0)
    model = build_dit(cfg, device=device).to(dtype).train()
    c, t, h, w = a.latent
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(a.batch, c, t, h, w, generator=g).to(device, dtype)
    ts = torch.rand(a.batch, generator=g).mul(1000).to(device)
    text = torch.randn(a.batch, a.text_len, a.text_dim, generator=g).to(device, dtype)
    mask = torch.ones(a.batch, a.text_len, dtype=torch.long, device=device)
    tokens = a.batch * math.prod(n // p for n, p in zip((t, h, w), cfg.patch_size, strict=True))

    def step() -> None:
        out = model(x, ts, text, mask)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(a.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    sec = (time.perf_counter() - t0) / a.steps
    row = {
        "family": family,
        "params": count_params(model),
        "tokens_per_step": tokens,
        "ms_per_step": round(sec * 1e3, 2),
        "tokens_per_s": round(tokens / sec, 1),
        "device": str(device),
        "dtype": a.dtype,
        "config": {
            "layers": a.layers,
            "dim": cfg.dim,
            "heads": a.heads,
            "batch": a.batch,
            "latent": a.latent,
        },
    }
    if device.type == "cuda":
        row["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=96)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--latent", type=int, nargs=4, default=[4, 8, 16, 16], metavar=("C", "T", "H", "W"))
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--text-dim", type=int, default=64)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if a.threads:
        torch.set_num_threads(a.threads)
    for family in a.families:
        print(json.dumps(bench_family(family, a)), flush=True)


if __name__ == "__main__":
    main()
