"""Wrap a model for training: activation checkpointing per transformer block, DDP or FSDP2 sharding.

Every DiT block has the signature `block(x, text, c) -> (x, text)` (models/dit/blocks.py), so both wraps
act on `model.transformer_blocks` without knowing the family. Checkpointing replaces the block's bound
`forward` (not the module), so state-dict keys are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from longvideo.parallel.dist import DistEnv

MODES = ("none", "ddp", "fsdp")


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Recompute each block's activations in the backward pass (memory ~ one block's activations)."""
    for block in model.transformer_blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
    return model


def data_parallel(model: nn.Module, env: DistEnv, mode: str) -> nn.Module:
    """ "ddp": DistributedDataParallel (gradients averaged over ranks); "fsdp": FSDP2 `fully_shard` on every
    transformer block and the root (parameters, gradients and optimizer state sharded, gradients averaged);
    "none" or a world of one: the model itself. Call before building the optimizer."""
    if mode not in MODES:
        raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
    if mode == "none" or not env.distributed:
        return model
    if mode == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer_blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on the CPU, on every rank: FSDP2 DTensors gathered."""
    out = {}
    for k, v in unwrap(model).state_dict().items():
        full = v.full_tensor() if hasattr(v, "full_tensor") else v
        out[k] = full.detach().cpu()
    return out


@torch.no_grad()
def load_full_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict into a plain, DDP or FSDP2 model (each rank keeps its shard)."""
    model = unwrap(model)
    own = model.state_dict()
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    if missing or unexpected:
        raise ValueError(
            f"state dict mismatch: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    for k, v in own.items():
        src = sd[k].to(v.dtype)
        if hasattr(v, "device_mesh"):  # DTensor: copy this rank's shard
            from torch.distributed.tensor import distribute_tensor

            v.copy_(distribute_tensor(src.to(v.device_mesh.device_type), v.device_mesh, v.placements))
        else:
            v.copy_(src.to(v.device))
