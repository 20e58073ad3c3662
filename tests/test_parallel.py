"""parallel/: the device mesh (named dims over real gloo processes), `parallelize` and its order."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from longvideo.errors import UserError
from longvideo.models.dit import build_dit
from longvideo.parallel import (
    DistEnv,
    ParallelConfig,
    ParallelDims,
    all_reduce_sum,
    build_mesh,
    parallelize,
    unwrap,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dims_resolve_to_the_world():
    assert ParallelDims().resolve(8) == ParallelDims(8, 1, 1)
    assert ParallelDims(dp=-1, sp=2).resolve(8) == ParallelDims(4, 2, 1)
    assert ParallelDims(dp=2, sp=2, cfg=2).resolve(8) == ParallelDims(2, 2, 2)
    with pytest.raises(UserError, match="do not fill a world of 6"):
        ParallelDims(dp=-1, sp=4).resolve(6)
    with pytest.raises(UserError, match="do not fill"):
        ParallelDims(dp=3).resolve(4)
    with pytest.raises(UserError, match="sp must be >= 1"):
        ParallelDims(sp=0).resolve(4)


def test_world_of_one_mesh():
    mesh = build_mesh(DistEnv())
    assert [mesh.size(d) for d in ("dp", "sp", "cfg")] == [1, 1, 1]
    assert mesh.rank("dp") == 0 and mesh.group("dp") is None and mesh["dp"] is None
    with pytest.raises(ValueError, match="not one of"):
        mesh.size("tp")


def _tiny():
    torch.manual_seed(0)
    model = build_dit("tiny-full3d", device="cpu")
    x = torch.randn(2, model.cfg.in_channels, 2, 8, 8)
    args = (x, torch.tensor([0.3, 0.7]), torch.randn(2, 4, model.cfg.text_dim))
    return model, args


def _grads(model, args):
    model.zero_grad()
    out = model(*args)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_parallelize_checkpointing_keeps_outputs_grads_and_keys():
    model, args = _tiny()
    keys = list(model.state_dict())
    ref_out, ref_grads = _grads(model, args)
    wrapped = parallelize(model, build_mesh(DistEnv()), ParallelConfig("ddp", activation_checkpointing=True))
    assert wrapped is model and list(unwrap(wrapped).state_dict()) == keys  # a dp of one: no wrapper
    out, grads = _grads(wrapped, args)
    assert torch.equal(out, ref_out)
    for n, g in ref_grads.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-6, atol=1e-7)


def test_parallelize_refuses_unknown_modes():
    model, _ = _tiny()
    with pytest.raises(UserError, match="parallel must be one of"):
        parallelize(model, build_mesh(DistEnv()), ParallelConfig("pipeline"))


@pytest.mark.slow
def test_parallelize_compile_equals_eager():
    """torch.compile of every block (inductor on the CPU): same output, keys unchanged (~1 min on 2 cores)."""
    model, args = _tiny()
    with torch.no_grad():
        ref = model(*args)
        compiled = parallelize(model, build_mesh(DistEnv()), ParallelConfig("none", compile=True))
        torch.testing.assert_close(compiled(*args), ref, rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mesh_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    from longvideo.parallel import init_distributed, shutdown

    try:
        mesh = build_mesh(init_distributed("cpu"), ParallelDims(dp=-1, sp=2))
        x = torch.tensor([float(rank)], dtype=torch.float64)
        dp_sum = float(all_reduce_sum(x.clone(), mesh.group("dp")))
        sp_sum = float(all_reduce_sum(x.clone(), mesh.group("sp")))
        row = [rank, mesh.size("dp"), mesh.size("sp"), mesh.rank("dp"), mesh.rank("sp"), dp_sum, sp_sum]
        torch.save(row, f"{out}/{rank}.pt")
    finally:
        shutdown()


@pytest.mark.slow
def test_mesh_dims_over_four_gloo_processes(tmp_path):
    """dp x sp = 2 x 2 over 4 real processes: rank = dp_rank * 2 + sp_rank, and a reduction over the dp
    group sums only the dp peers (what the trainer's logged loss and batch split use), not the world."""
    mp.start_processes(_mesh_worker, args=(4, _free_port(), str(tmp_path)), nprocs=4, start_method="spawn")
    rows = {r: torch.load(tmp_path / f"{r}.pt") for r in range(4)}
    for r, (_, dp, sp, dp_rank, sp_rank, dp_sum, sp_sum) in rows.items():
        assert (dp, sp) == (2, 2) and r == dp_rank * 2 + sp_rank
        assert dp_sum == sum(q for q in range(4) if q % 2 == sp_rank)  # same sp coordinate
        assert sp_sum == sum(q for q in range(4) if q // 2 == dp_rank)  # same dp coordinate
