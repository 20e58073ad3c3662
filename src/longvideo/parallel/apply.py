"""`parallelize`: what makes a model parallel, applied from outside in one documented order, and the helpers
that see through what it did (DDP wrappers, FSDP2 DTensors).

    mesh = build_mesh(env, ParallelDims(dp=-1))
    model = parallelize(model, mesh, ParallelConfig(data_parallel="fsdp", activation_checkpointing=True))

The order (torchtitan's): 1. sequence parallel, 2. activation checkpointing, 3. compile, 4. data parallel
(FSDP2 / DDP) -- each step wraps what the one before left. Every DiT block is called as
`block(x, text, c) -> (x, text)` (models/dit/blocks.py), so steps 2-4 act on `model.transformer_blocks`
without knowing the family. Checkpointing and compile replace a block's bound `forward` (not the module),
so state-dict keys are unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from longvideo.errors import UserError
from longvideo.parallel.mesh import Mesh

MODES = ("none", "ddp", "fsdp")


@dataclass
class ParallelConfig:
    data_parallel: str = "ddp"  # "none" | "ddp" | "fsdp" (over the mesh's dp dimension; a dp of 1: none)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    compile: bool = False  # torch.compile each block
    ring: int = 0  # sequence parallel: ranks in the ring, the rest Ulysses; 0 = chosen by the heads (sp.py)

    def validate(self) -> ParallelConfig:
        if self.data_parallel not in MODES:
            raise UserError(f"parallel must be one of {', '.join(MODES)}, got {self.data_parallel!r}")
        return self


def parallelize(model: nn.Module, mesh: Mesh, cfg: ParallelConfig) -> nn.Module:
    """Apply the parallel plan to a model on its device; call before building the optimizer."""
    cfg.validate()
    if mesh.size("sp") > 1:  # 1. sequence parallel
        from longvideo.parallel.sp import sequence_parallel

        sequence_parallel(model, mesh, cfg.ring)
    if cfg.activation_checkpointing:  # 2.
        checkpoint_blocks(model)
    if cfg.compile:  # 3.
        for block in model.transformer_blocks:
            block.forward = torch.compile(block.forward)
    return data_parallel(model, mesh, cfg.data_parallel)  # 4.


def parallelize_inference(model: nn.Module, mesh: Mesh, ring: int = 0) -> nn.Module:
    """The generation plan: sequence parallel over the mesh's sp ranks (`ring` of them in the ring, the rest
    Ulysses; 0 = chosen from the heads, see sp.py), then CFG parallel over its cfg ranks (the doubled
    [cond; uncond] batch split, cfg.py). The model's forward is replaced in place; keys are unchanged."""
    if mesh.size("sp") > 1:
        from longvideo.parallel.sp import sequence_parallel

        sequence_parallel(model, mesh, ring)
    if mesh.size("cfg") > 1:
        from longvideo.parallel.cfg import cfg_parallel

        cfg_parallel(model, mesh)
    return model


def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Recompute each block's activations in the backward pass (memory ~ one block's activations)."""
    for block in model.transformer_blocks:
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
    return model


def data_parallel(model: nn.Module, mesh: Mesh, mode: str) -> nn.Module:
    """ "ddp": DistributedDataParallel; "fsdp": FSDP2 `fully_shard` on every transformer block and the root
    (parameters, gradients and optimizer state sharded); "none": the model itself. Over the dp ranks, or
    with sequence parallel over the dp x sp ranks (a sequence-parallel model's gradients average over its sp
    ranks to the one-process gradient, sp.py): gradients averaged. "none" with sp > 1 still needs that
    average: it gets DDP over the sp ranks."""
    if mode not in MODES:
        raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
    dp, sp = mesh.size("dp"), mesh.size("sp")
    if dp * sp == 1 or (mode == "none" and sp == 1):
        return model
    flat = mesh.flat_dp_sp() if sp > 1 else mesh["dp"]
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer_blocks:
            fully_shard(block, mesh=flat)
        fully_shard(model, mesh=flat)
        return model
    dev = mesh.env.device
    ids = [dev.index] if dev.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, process_group=flat.get_group())


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def no_sync(model: nn.Module, sync: bool):
    """A context for one micro-batch's backward: gradient sync only when `sync` (the last micro-batch)."""
    if sync:
        return contextlib.nullcontext()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full_tensor(x: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered whole (collective), any other tensor as it is."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def like(src: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out as `ref`: this rank's shard when `ref` is a DTensor, else on ref's device."""
    if hasattr(ref, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(src.to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)
    return src.to(ref.device)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on the CPU, on every rank: FSDP2 DTensors gathered."""
    return {k: full_tensor(v).detach().cpu() for k, v in unwrap(model).state_dict().items()}


@torch.no_grad()
def load_full_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict into a plain, DDP or FSDP2 model (each rank keeps its shard)."""
    own = unwrap(model).state_dict()
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    if missing or unexpected:
        raise ValueError(
            f"state dict mismatch: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    for k, v in own.items():
        v.copy_(like(sd[k].to(v.dtype), v))


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer's whole state on the CPU (collective under FSDP2), keyed by parameter names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(unwrap(model), opt, options=opts)


def load_full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    set_optimizer_state_dict(unwrap(model), opt, state, options=opts)
