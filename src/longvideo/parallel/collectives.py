"""Collectives with autograd for sequence parallelism, over any process group (gloo or NCCL), uneven shards
allowed. Each is the identity on a group of one (or None), so single-process code runs them unchanged.

- `all_to_all(x, group, scatter_dim, gather_dim, scatter_sizes, gather_sizes)`: split x along scatter_dim
  into one piece per rank, send piece i to rank i, and join the pieces received along gather_dim (Ulysses:
  sequence-split -> head-split and back). Its backward is the reverse all-to-all.
- `gather_replicated(x, group, dim, sizes)`: every rank's shard joined along dim, for a result that every
  rank then uses *identically* (the model output the loss is computed from on every sp rank): backward
  keeps this rank's slice of the gradient, without communication.
- `gather_summed(x, group)`: every rank's x stacked (equal shapes), for results each rank uses differently
  (halo frames): backward sums the gradient over ranks, then keeps this rank's piece.
- `broadcast(x, group, src)`: rank `src`'s x on every rank; backward sums the gradient onto src.
- `scale_grad(x, factor)`: the identity whose backward multiplies the gradient by factor.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def even_split(n: int, parts: int) -> list[int]:
    """n items over `parts` ranks, contiguous, the first n % parts ranks one more: 9 over 2 -> [5, 4]."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _all_to_all(x: Tensor, group, scatter_dim: int, gather_dim: int, scatter_sizes, gather_sizes) -> Tensor:
    me = group_rank(group)
    pieces = x.split(list(scatter_sizes), dim=scatter_dim)
    send = torch.cat([p.contiguous().flatten() for p in pieces])
    shapes = []
    for j in range(len(scatter_sizes)):
        s = list(x.shape)
        s[scatter_dim], s[gather_dim] = scatter_sizes[me], gather_sizes[j]
        shapes.append(s)
    out_splits = [math.prod(s) for s in shapes]
    recv = send.new_empty(sum(out_splits))
    dist.all_to_all_single(recv, send, out_splits, [p.numel() for p in pieces], group=group)
    return torch.cat([r.view(s) for r, s in zip(recv.split(out_splits), shapes, strict=True)], dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim, scatter_sizes, gather_sizes):
        ctx.args = (group, scatter_dim, gather_dim, scatter_sizes, gather_sizes)
        return _all_to_all(x, group, scatter_dim, gather_dim, scatter_sizes, gather_sizes)

    @staticmethod
    def backward(ctx, g):
        group, scatter_dim, gather_dim, scatter_sizes, gather_sizes = ctx.args
        g = _all_to_all(g, group, gather_dim, scatter_dim, gather_sizes, scatter_sizes)
        return g, None, None, None, None, None


def all_to_all(
    x: Tensor, group, scatter_dim: int, gather_dim: int, scatter_sizes: list[int], gather_sizes: list[int]
) -> Tensor:
    """x with x.shape[scatter_dim] = sum(scatter_sizes) and x.shape[gather_dim] = gather_sizes[this rank]
    -> x.shape[scatter_dim] = scatter_sizes[this rank], x.shape[gather_dim] = sum(gather_sizes): piece j of
    the scatter dim goes to rank j, rank j's piece joins the gather dim at position j."""
    if group_size(group) == 1:
        return x
    return _AllToAll.apply(x, group, scatter_dim, gather_dim, tuple(scatter_sizes), tuple(gather_sizes))


def _gather(x: Tensor, group, dim: int, sizes) -> Tensor:
    """Shards of `sizes` along dim (padded to the largest for all_gather) joined in rank order."""
    pad = max(sizes) - x.shape[dim]
    xp = x if pad == 0 else torch.cat([x, x.new_zeros(*x.shape[:dim], pad, *x.shape[dim + 1 :])], dim=dim)
    out = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(out, xp.contiguous(), group=group)
    return torch.cat([o.narrow(dim, 0, n) for o, n in zip(out, sizes, strict=True)], dim=dim)


class _GatherReplicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim, sizes):
        ctx.dim, ctx.start, ctx.n = dim, sum(sizes[: group_rank(group)]), x.shape[dim]
        return _gather(x, group, dim, sizes)

    @staticmethod
    def backward(ctx, g):
        return g.narrow(ctx.dim, ctx.start, ctx.n), None, None, None


def gather_replicated(x: Tensor, group, dim: int, sizes: list[int]) -> Tensor:
    """Every rank's shard (this one's: sizes[rank] along dim) joined along dim. The result must be used the
    same way on every rank (e.g. one loss computed from it everywhere): the gradient of this rank's shard
    is then its slice of the result's gradient, taken without communication."""
    if group_size(group) == 1:
        return x
    return _GatherReplicated.apply(x, group, dim, tuple(sizes))


class _GatherSummed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        out = [torch.empty_like(x) for _ in range(group_size(group))]
        dist.all_gather(out, x.contiguous(), group=group)
        ctx.group = group
        return torch.stack(out)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        dist.all_reduce(g, group=ctx.group)
        return g[group_rank(ctx.group)], None


def gather_summed(x: Tensor, group) -> Tensor:
    """(P, *x.shape): every rank's x (equal shapes), each rank free to use any of them its own way; the
    gradient of x is the sum over ranks of the gradients of their copies of it."""
    if group_size(group) == 1:
        return x[None]
    return _GatherSummed.apply(x, group)


class _Broadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, src):
        ctx.group, ctx.src = group, src
        out = x.detach().clone().contiguous()
        dist.broadcast(out, dist.get_global_rank(group, src), group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        dist.all_reduce(g, group=ctx.group)
        return (g if group_rank(ctx.group) == ctx.src else torch.zeros_like(g)), None, None


def broadcast(x: Tensor, group, src: int = 0) -> Tensor:
    """Group rank src's x on every rank (x must have its shape everywhere); the gradient of src's x is the
    sum over ranks of their gradients, the other ranks' x get none (zeros)."""
    if group_size(group) == 1:
        return x
    return _Broadcast.apply(x, group, src)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def scale_grad(x: Tensor, factor: float) -> Tensor:
    return _ScaleGrad.apply(x, factor) if x.requires_grad else x
