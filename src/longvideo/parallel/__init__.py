"""Parallelism applied from outside the models (DESIGN.md §2): process groups, data parallelism (DDP or
FSDP2 sharding), activation checkpointing. Model files never import this package."""

from longvideo.parallel.apply import checkpoint_blocks, data_parallel, full_state_dict, load_full_state_dict
from longvideo.parallel.dist import DistEnv, all_reduce_sum, barrier, init_distributed, shutdown

__all__ = [
    "DistEnv",
    "all_reduce_sum",
    "barrier",
    "checkpoint_blocks",
    "data_parallel",
    "full_state_dict",
    "init_distributed",
    "load_full_state_dict",
    "shutdown",
]
