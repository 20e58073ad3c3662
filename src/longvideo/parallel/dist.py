"""Process groups from the environment `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

One process without those variables is a world of one: nothing is initialised and every collective below
is the identity, so the same training code runs on a laptop and under torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from longvideo.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str = "auto") -> DistEnv:
    """device: "auto" (CUDA when available), "cpu" or "cuda"; backend: "auto" (NCCL on CUDA, gloo on CPU).
    A device that is not here, or torchrun variables that are not numbers, are a one-line UserError."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda: torch sees no CUDA device here (use cpu, or auto)")
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world or local < 0:
        raise UserError(
            f"torchrun environment: RANK {rank} is not in 0..WORLD_SIZE-1 ({world}) or LOCAL_RANK < 0"
        )
    if cuda and local >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = ("nccl" if cuda else "gloo") if backend == "auto" else backend
        dist.init_process_group(backend, device_id=dev if cuda else None)
    return DistEnv(rank, world, local, dev)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise UserError(
            f"environment variable {name}={text!r} is not an integer (torchrun sets it)"
        ) from None


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum over the ranks of `group` (None: the world) in place, returned; the identity in a world of one."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
