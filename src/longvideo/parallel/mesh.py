"""The device mesh: the world's ranks laid out along named dimensions.

    dims = ParallelDims(dp=-1, sp=1, cfg=1)         # -1: whatever the world leaves
    mesh = build_mesh(env, dims)                    # torch DeviceMesh, dims ("dp", "sp", "cfg")
    mesh.size("dp"), mesh.rank("dp"), mesh.group("dp")

`dp` is data parallel (samples split, gradients averaged: DDP or FSDP2 over this dimension), `sp` sequence
parallel (one sample's tokens split over ranks, sp.py), `cfg` classifier-free-guidance parallel (the two
guidance branches on two ranks, at inference, cfg.py). Trainers split batches and reduce logged losses over
`dp`, never over the whole world: with sp > 1 the two differ. Gradients are averaged over the flattened
`dp x sp` ranks in one reduction (`flat_dp_sp`; sp.py makes the sp ranks' mean the one-process gradient).

USP (Ulysses x Ring) splits the sp ranks once more: `sp_groups(ring)` gives this rank's Ulysses group
(`sp // ring` neighbouring sp ranks) and ring group (`ring` ranks, one from each Ulysses group); sp rank
s = ring_index * ulysses + ulysses_index.

In a world of one nothing is initialised and every dimension has size 1 (group None: the collectives in
dist.py are then the identity), so the same code runs on a laptop and under torchrun.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from longvideo.errors import UserError
from longvideo.parallel.dist import DistEnv

DIMS = ("dp", "sp", "cfg")  # outer to inner: sp and cfg ranks are neighbours (fast links within a node)


@dataclass(frozen=True)
class ParallelDims:
    """Degrees along each mesh dimension; dp = -1 takes what the world leaves."""

    dp: int = -1
    sp: int = 1
    cfg: int = 1

    def resolve(self, world: int) -> ParallelDims:
        """Concrete degrees whose product is the world size, or a one-line error."""
        for name in ("sp", "cfg"):
            if getattr(self, name) < 1:
                raise UserError(f"parallel dims: {name} must be >= 1, got {getattr(self, name)}")
        inner = self.sp * self.cfg
        dp = self.dp if self.dp != -1 else world // inner
        if dp < 1 or dp * inner != world:
            raise UserError(
                f"parallel dims dp={self.dp} x sp={self.sp} x cfg={self.cfg} do not fill a world of {world} "
                "processes (dp=-1 takes what is left)"
            )
        return ParallelDims(dp, self.sp, self.cfg)


class Mesh:
    """Named dimensions over the world; a thin layer on torch's DeviceMesh that also works unlaunched."""

    def __init__(self, env: DistEnv, dims: ParallelDims, device_mesh=None):
        self.env, self.dims, self.device_mesh = env, dims, device_mesh
        self._flat = None  # flat_dp_sp's DeviceMesh
        self._usp: dict = {}  # ring degree -> the (dp, ring, ulysses, cfg) DeviceMesh

    def size(self, dim: str) -> int:
        return getattr(self.dims, _check(dim))

    def rank(self, dim: str) -> int:
        """This process's coordinate along `dim`."""
        if self.device_mesh is None:
            return 0
        return self.device_mesh.get_local_rank(_check(dim))

    def group(self, dim: str):
        """The process group of this rank's neighbours along `dim`; None in a world of one."""
        if self.device_mesh is None:
            return None
        return self.device_mesh.get_group(_check(dim))

    def __getitem__(self, dim: str):
        """The 1-D DeviceMesh along `dim` (FSDP2's `mesh=`); None in a world of one."""
        return None if self.device_mesh is None else self.device_mesh[_check(dim)]

    def flat_dp_sp(self):
        """The 1-D DeviceMesh over this rank's dp x sp peers (same cfg coordinate), for the one gradient
        reduction of data + sequence parallel training; None in a world of one. Built once (collective)."""
        if self.device_mesh is None:
            return None
        if self._flat is None:
            from torch.distributed.device_mesh import init_device_mesh

            shape = (self.dims.dp * self.dims.sp, self.dims.cfg)
            self._flat = init_device_mesh(self.env.device.type, shape, mesh_dim_names=("dp_sp", "cfg"))
        return self._flat["dp_sp"]

    def sp_groups(self, ring: int):
        """(ulysses group, ring group) of this rank for `ring` ranks in the ring (1 <= ring, ring | sp);
        None for a group of one. Built once per ring degree (collective: every rank must call it)."""
        sp = self.dims.sp
        if ring < 1 or sp % ring:
            raise UserError(f"parallel: ring={ring} must divide sp={sp}")
        if ring == 1:
            return self.group("sp"), None
        if ring == sp:
            return None, self.group("sp")
        if ring not in self._usp:
            from torch.distributed.device_mesh import init_device_mesh

            shape = (self.dims.dp, ring, sp // ring, self.dims.cfg)
            names = ("dp", "ring", "ulysses", "cfg")
            self._usp[ring] = init_device_mesh(self.env.device.type, shape, mesh_dim_names=names)
        m = self._usp[ring]
        return m.get_group("ulysses"), m.get_group("ring")


def build_mesh(env: DistEnv, dims: ParallelDims = ParallelDims()) -> Mesh:
    """The mesh of this world (torch.distributed initialised by `init_distributed` when world > 1)."""
    dims = dims.resolve(env.world_size)
    if not env.distributed:
        return Mesh(env, dims)
    from torch.distributed.device_mesh import init_device_mesh

    shape = tuple(getattr(dims, d) for d in DIMS)
    assert math.prod(shape) == env.world_size
    return Mesh(env, dims, init_device_mesh(env.device.type, shape, mesh_dim_names=DIMS))


def _check(dim: str) -> str:
    if dim not in DIMS:
        raise ValueError(f"mesh dimension {dim!r} is not one of {DIMS}")
    return dim
