"""Parallelism applied from outside the models (DESIGN.md §2): process groups and the device mesh
(mesh.py), `parallelize` (apply.py: sequence parallel, activation checkpointing, compile, DDP or FSDP2
sharding, in one order; `parallelize_inference`: sequence and CFG parallel), sp.py / ring.py / cfg.py
and the helpers that see through DDP wrappers and FSDP2 DTensors. Model files never import this package."""

from longvideo.parallel.apply import (
    ParallelConfig,
    checkpoint_blocks,
    data_parallel,
    full_optimizer_state,
    full_state_dict,
    full_tensor,
    like,
    load_full_optimizer_state,
    load_full_state_dict,
    no_sync,
    parallelize,
    parallelize_inference,
    unwrap,
)
from longvideo.parallel.dist import DistEnv, all_reduce_sum, barrier, init_distributed, shutdown
from longvideo.parallel.mesh import Mesh, ParallelDims, build_mesh

__all__ = [
    "DistEnv",
    "Mesh",
    "ParallelConfig",
    "ParallelDims",
    "all_reduce_sum",
    "barrier",
    "build_mesh",
    "checkpoint_blocks",
    "data_parallel",
    "full_optimizer_state",
    "full_state_dict",
    "full_tensor",
    "init_distributed",
    "like",
    "load_full_optimizer_state",
    "load_full_state_dict",
    "no_sync",
    "parallelize",
    "parallelize_inference",
    "shutdown",
    "unwrap",
]
