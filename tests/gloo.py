"""Run a function in N real gloo processes (spawned, as torchrun would start them) and collect what each
returns: `results = run_gloo(fn, 4, *args)` -> [fn(*args) on rank 0, ..., on rank 3].

`fn` must be a module-level function (spawn pickles it by name); it runs after `init_distributed("cpu")`
with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set, and the process group is shut down after
it. Each rank's return value comes back through a torch.save file. One torch thread per process.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out: str, fn, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    from longvideo.parallel import init_distributed, shutdown

    try:
        init_distributed("cpu")
        torch.save(fn(*args), Path(out) / f"{rank}.pt")
    finally:
        shutdown()


def run_gloo(fn, world: int, *args) -> list:
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _entry, args=(world, free_port(), out, fn, args), nprocs=world, start_method="spawn"
        )
        return [torch.load(Path(out) / f"{r}.pt", weights_only=False) for r in range(world)]
