"""Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers"): exact softmax attention
over a sequence whose keys/values are sharded across the ranks of a process group, without any rank ever
holding the whole sequence's keys or scores.

Each rank keeps its own queries. The (k, v) blocks travel around the ring -- every step each rank sends the
block it holds to rank + 1 and receives the next one from rank - 1 (asynchronous P2P, overlapped with the
block's compute) -- and the per-block results are combined with the online log-sum-exp merge of flash
attention (Dao et al. 2022): after P steps every rank has softmax(q k^T / sqrt(d) + mask) v over all P
blocks, equal to SDPA on the gathered sequence up to rounding. The backward pass is hand-written in the
flash-attention style: blockwise, from the final log-sum-exp saved by the forward, with each block's dk, dv
accumulators travelling around the ring together with (k, v) and arriving back home after the full circle.

    out = ring_attention(q, k, v, mask, group=g, sizes=[5, 4])   # q (B,H,Lq,d), k/v (B,H,Lk_r,d) per rank
    out, lse = attention_block(q, k, v, mask)                   # one block: out and its log-sum-exp
    out, lse = merge_blocks(out, lse, out_b, lse_b)             # two blocks' results as one

What this is and is not:
- Pure torch (matmul, exp, torch.distributed P2P): it runs on CPU with gloo as on GPUs with NCCL. There is
  no fused fast-kernel path (no flash-attn / yunchang): each block materialises its (B,H,Lq,Lk_block)
  scores in float32 (float64 inputs stay float64), so the memory per rank is one block of scores -- the
  point of ring attention -- but the speed is that of plain matmuls.
- Uneven shards are allowed (sizes 5 and 4): the blocks are padded to max(sizes) to travel, and only the
  source rank's real rows are attended to (the padding never enters a score).
- The mask is bool (True = attend), broadcastable to (B,H,Lq,sum(sizes)) in GLOBAL key coordinates (the
  ranks' keys concatenated in group-rank order); each block takes its columns. A row with no key to attend
  to anywhere gives output 0 (and zero gradients), where SDPA gives NaN.
- No causal mask and no zigzag load balancing: the video DiT's attentions are bidirectional.
- Every rank of the group must make the same calls in the same order, with the same requires_grad pattern
  (the backward communicates too). Activation checkpointing (use_reentrant=False or True) re-runs the
  forward in the backward pass; that is fine as long as every rank does so, which it does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

_NEG_INF = float("-inf")


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _finite(x: Tensor) -> Tensor:
    """x with -inf (rows with nothing to attend to) as 0, so that exp(s - x) is 0 there instead of NaN."""
    return x.masked_fill(torch.isneginf(x), 0.0)


def _scores(q: Tensor, k: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """(B,H,Lq,Lk) scaled scores in the compute dtype, -inf where the mask is False."""
    dt = _compute_dtype(q)
    s = torch.matmul(q.to(dt), k.to(dt).transpose(-2, -1)).mul_(scale)
    if mask is not None:
        s.masked_fill_(~mask, _NEG_INF)
    return s


def attention_block(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Attention of q (B,H,Lq,d) to one block of keys k (B,H,Lk,d) / values v (B,H,Lk,dv), mask None or bool
    broadcastable to (B,H,Lq,Lk) (True = attend), scale default 1/sqrt(d).

    Returns out (B,H,Lq,dv), normalised within the block, and lse (B,H,Lq), the log-sum-exp of the scaled
    masked scores, both in float32 (float64 for float64 inputs). A row fully masked in this block has out 0
    and lse -inf (it then carries no weight in `merge_blocks`). Differentiable by autograd as well, though
    ring_attention uses its own backward."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = _scores(q, k, mask, scale)  # (B,H,Lq,Lk): the one block of scores
    m = s.amax(dim=-1, keepdim=True)  # (B,H,Lq,1) row maximum, -inf for a fully masked row
    in_place = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    p = s.sub_(_finite(m)).exp_() if in_place else (s - _finite(m)).exp()  # (B,H,Lq,Lk) in [0, 1]
    total = p.sum(dim=-1, keepdim=True)  # (B,H,Lq,1): >= 1, or 0 for a fully masked row
    out = torch.matmul(p, v.to(p.dtype)) / total.masked_fill(total == 0, 1.0)  # (B,H,Lq,dv)
    lse = (m + total.log()).squeeze(-1)  # (B,H,Lq); -inf + log 0 = -inf for a fully masked row
    return out, lse


def merge_blocks(out: Tensor, lse: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """The (out, lse) of attention over the union of two disjoint key blocks from each block's own (out
    (B,H,Lq,dv) normalised within its block, lse (B,H,Lq)): the online softmax merge. -inf safe: a block
    with lse -inf has weight 0, and a row with -inf in both stays out 0, lse -inf."""
    lse_new = torch.logaddexp(lse, lse_b)  # (B,H,Lq), -inf only where both are
    base = _finite(lse_new)
    w, w_b = (lse - base).exp().unsqueeze(-1), (lse_b - base).exp().unsqueeze(-1)  # (B,H,Lq,1)
    return out * w + out_b * w_b, lse_new


@dataclass(frozen=True)
class _Ring:
    """Where this rank stands in the ring: its group rank, every rank's key length, its P2P peers."""

    group: object
    me: int
    sizes: tuple[int, ...]
    send_to: int  # global rank of group rank me + 1
    recv_from: int  # global rank of group rank me - 1
    scale: float

    @property
    def size(self) -> int:
        return len(self.sizes)

    def source(self, step: int) -> int:
        """The group rank whose (k, v) block this rank holds at `step`."""
        return (self.me - step) % self.size

    def mask_block(self, mask: Tensor | None, j: int) -> Tensor | None:
        """Rank j's columns of a mask in global key coordinates."""
        if mask is None or mask.shape[-1] == 1:
            return mask
        return mask.narrow(-1, sum(self.sizes[:j]), self.sizes[j])


def _pack(tensors: list[Tensor], n: int, dtype: torch.dtype) -> Tensor:
    """The tensors (..., L, d_i), padded with zeros to length n along dim -2, as one flat buffer to send."""
    return torch.cat([F.pad(t, (0, 0, 0, n - t.shape[-2])).to(dtype).reshape(-1) for t in tensors])


def _unpack(buf: Tensor, shapes: list[torch.Size], length: int) -> list[Tensor]:
    """Views of a `_pack` buffer of padded `shapes`, each narrowed to its first `length` rows."""
    views = buf.split([s.numel() for s in shapes])
    return [x.view(s).narrow(-2, 0, length) for x, s in zip(views, shapes, strict=True)]


def _exchange(buf: Tensor, ring: _Ring) -> tuple[Tensor, list]:
    """Start sending buf to rank + 1 and receiving its like from rank - 1: (receive buffer, requests)."""
    recv = torch.empty_like(buf)
    ops = [
        dist.P2POp(dist.isend, buf, ring.send_to, ring.group),
        dist.P2POp(dist.irecv, recv, ring.recv_from, ring.group),
    ]
    return recv, dist.batch_isend_irecv(ops)


def _wait(requests: list) -> None:
    for r in requests:
        r.wait()


def _padded_shapes(k: Tensor, v: Tensor, n: int) -> list[torch.Size]:
    return [torch.Size((*k.shape[:-2], n, k.shape[-1])), torch.Size((*v.shape[:-2], n, v.shape[-1]))]


def _ring_forward(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, ring: _Ring) -> tuple[Tensor, Tensor]:
    """out (B,H,Lq,dv) in q's dtype and the final lse (B,H,Lq) in the compute dtype."""
    dt = _compute_dtype(q)
    n = max(ring.sizes)
    shapes = _padded_shapes(k, v, n)
    out = q.new_zeros((*q.shape[:-1], v.shape[-1]), dtype=dt)  # (B,H,Lq,dv) running, normalised so far
    lse = q.new_full(q.shape[:-1], _NEG_INF, dtype=dt)  # (B,H,Lq) running log-sum-exp: nothing seen yet
    buf = _pack([k, v], n, k.dtype)  # this rank's (k, v) block, padded to n rows
    for step in range(ring.size):
        j = ring.source(step)
        nxt, requests = _exchange(buf, ring) if step < ring.size - 1 else (None, [])
        if ring.sizes[j]:
            kj, vj = _unpack(buf, shapes, ring.sizes[j])  # (B,H,Lk_j,d), (B,H,Lk_j,dv): no padding
            out, lse = merge_blocks(
                out, lse, *attention_block(q, kj, vj, ring.mask_block(mask, j), ring.scale)
            )
        _wait(requests)
        buf = nxt
    return out.to(q.dtype), lse


def _ring_backward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, out: Tensor, lse: Tensor, ring: _Ring
) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of this rank's q, k, v (in their dtypes) from dout (B,H,Lq,dv) and the forward's out and
    final lse: p = exp(s - lse), dv += p^T dout, ds = p (dout v^T - delta), dq += ds k, dk += ds^T q."""
    dt = _compute_dtype(q)
    n = max(ring.sizes)
    shapes = _padded_shapes(k, v, n)
    dout, qc = dout.to(dt), q.to(dt)
    delta = (dout * out.to(dt)).sum(dim=-1, keepdim=True)  # (B,H,Lq,1) = rowsum(dout * out)
    lse = _finite(lse).unsqueeze(-1)  # (B,H,Lq,1); 0 for a row with nothing attended (its p is 0)
    dq = torch.zeros_like(qc)  # (B,H,Lq,d)
    buf = _pack([k, v], n, k.dtype)
    grads = buf.new_zeros(buf.numel(), dtype=dt)  # dk, dv of the block held, summed over the ranks seen
    for step in range(ring.size):
        j = ring.source(step)
        nxt, requests = _exchange(buf, ring) if step < ring.size - 1 else (None, [])
        if ring.sizes[j]:
            kj, vj = (x.to(dt) for x in _unpack(buf, shapes, ring.sizes[j]))  # (B,H,Lk_j,d), (B,H,Lk_j,dv)
            dkj, dvj = _unpack(grads, shapes, ring.sizes[j])  # views into `grads`
            p = _scores(q, kj, ring.mask_block(mask, j), ring.scale).sub_(lse).exp_()  # (B,H,Lq,Lk_j)
            dvj.add_(torch.matmul(p.transpose(-2, -1), dout))
            ds = torch.matmul(dout, vj.transpose(-2, -1)).sub_(delta).mul_(p)  # (B,H,Lq,Lk_j), reuses dp
            del p
            dq.add_(torch.matmul(ds, kj), alpha=ring.scale)
            dkj.add_(torch.matmul(ds.transpose(-2, -1), qc), alpha=ring.scale)
            del ds
        _wait(requests)
        buf = nxt
        if ring.size > 1:  # the block's gradients follow it to rank + 1; after the last step they are home
            grads, requests = _exchange(grads, ring)
            _wait(requests)
    dk, dv = _unpack(grads, shapes, k.shape[-2])
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, ring):
        out, lse = _ring_forward(q, k, v, mask, ring)
        ctx.ring = ring
        ctx.save_for_backward(q, k, v, mask, out, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, mask, out, lse = ctx.saved_tensors
        dq, dk, dv = _ring_backward(dout, q, k, v, mask, out, lse, ctx.ring)
        need = ctx.needs_input_grad
        return (dq if need[0] else None), (dk if need[1] else None), (dv if need[2] else None), None, None


def _make_ring(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, group, sizes) -> _Ring:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"ring_attention: q, k, v must be (B,H,L,d), got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"ring_attention: mismatched q {q.shape}, k {k.shape}, v {v.shape}")
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"ring_attention: mask must be bool (True = attend), got {mask.dtype}")
    world = 1 if group is None else dist.get_world_size(group)
    me = 0 if group is None else dist.get_rank(group)
    if sizes is None:
        if world == 1:
            sizes = [k.shape[-2]]
        else:
            mine = torch.tensor([k.shape[-2]], dtype=torch.int64, device=k.device)
            every = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(every, mine, group=group)
            sizes = [int(x) for x in every]
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != world or sizes[me] != k.shape[-2] or min(sizes) < 0:
        raise ValueError(
            f"ring_attention: sizes {list(sizes)} must list the {world} ranks' key lengths "
            f"(this rank, {me}, has {k.shape[-2]})"
        )
    if mask is not None and mask.shape[-1] not in (1, sum(sizes)):
        raise ValueError(
            f"ring_attention: the mask's last dim {mask.shape[-1]} must be 1 or all ranks' keys, {sum(sizes)}"
        )
    if world == 1:
        send_to = recv_from = -1  # never used: no communication
    else:
        ranks = dist.get_process_group_ranks(group)  # global ids, in group-rank order
        send_to, recv_from = ranks[(me + 1) % world], ranks[(me - 1) % world]
    return _Ring(group, me, sizes, send_to, recv_from, q.shape[-1] ** -0.5)


def ring_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    group=None,
    sizes: list[int] | tuple[int, ...] | None = None,
) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over the keys/values of ALL ranks of `group`: (B,H,Lq,dv), q's dtype.

    q (B,H,Lq,d): this rank's queries; k (B,H,Lk_r,d), v (B,H,Lk_r,dv): this rank's keys/values; `sizes`:
    every rank's key length in group-rank order (None: all-gathered once per call); mask None or bool
    broadcastable to (B,H,Lq,sum(sizes)) in global key coordinates (the ranks' keys concatenated in
    group-rank order), True = attend; it gets no gradient. A query row with no key to attend to gives 0.
    group None or of size 1: the same computation, locally. Gradients of q, k, v (each rank its own) are
    those of SDPA on the gathered sequence; under no_grad (or with no input requiring grad) nothing is
    saved for a backward pass."""
    ring = _make_ring(q, k, v, mask, group, sizes)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _RingAttention.apply(q, k, v, mask, ring)
    return _ring_forward(q, k, v, mask, ring)[0]


__all__ = ["attention_block", "merge_blocks", "ring_attention"]
