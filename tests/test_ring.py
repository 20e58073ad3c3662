"""Ring attention (parallel/ring.py) against SDPA on the whole sequence in one process: outputs and the
gradients of q, k, v within 1e-10 in float64, each rank comparing its own shard. The multi-process cases run
batched, one spawned gloo run per world size (2, 3, 4), each checking several cases."""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gloo import run_gloo
from longvideo.parallel.ring import attention_block, merge_blocks, ring_attention

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
TOL = 1e-10


def _data(seed: int, b: int, h: int, lq: int, lk: int, d: int, dv: int, mask: str):
    """Global q (b,h,lq,d), k (b,h,lk,d), v (b,h,lk,dv), the weights of the loss (b,h,lq,dv) and a bool mask
    with at least one True per row: None, "keys" (b,1,1,lk) key padding or "full" (b,h,lq,lk). The same on
    every rank (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, h, lq, d, generator=g, dtype=F64), torch.randn(b, h, lk, d, generator=g, dtype=F64)
    v, w = (
        torch.randn(b, h, lk, dv, generator=g, dtype=F64),
        torch.randn(b, h, lq, dv, generator=g, dtype=F64),
    )
    m = None
    if mask != "none":
        shape = (b, 1, 1, lk) if mask == "keys" else (b, h, lq, lk)
        m = torch.rand(shape, generator=g) > 0.5
        m.scatter_(-1, torch.randint(0, lk, (*shape[:-1], 1), generator=g), True)  # no fully masked row
    return q, k, v, w, m


def _sdpa_twice(q, k, v, m):
    return F.scaled_dot_product_attention(
        F.scaled_dot_product_attention(q, k, v, attn_mask=m), k, v, attn_mask=m
    )


def _case(
    group, qs, ks, *, heads=3, mask="full", mode="plain", d=4, dv=4, seed=0, pass_sizes=True, dead=False
):
    """One case on this rank: {name: max |ring - sdpa|} over the output and the gradients of this rank's
    shards. mode: plain, checkpoint (two ring attentions in one checkpointed function), nograd, q_only or
    kv_only (the others do not require grad). dead: global query row 0 masked out entirely (its output is 0;
    the reference unmasks it and gives it loss weight 0, so every gradient compares exactly)."""
    me = dist.get_rank(group) if group is not None else 0
    q, k, v, w, m = _data(seed, 2, heads, sum(qs), sum(ks), d, dv, mask)
    m_ring = m
    if dead:
        w[:, :, 0] = 0
        m_ring = m.clone()
        m_ring[:, :, 0] = False
    qo, ko = sum(qs[:me]), sum(ks[:me])
    rows, cols = slice(qo, qo + qs[me]), slice(ko, ko + ks[me])
    need = {"q_only": (True, False, False), "kv_only": (False, True, True)}.get(mode, (True, True, True))
    full = [x.clone().requires_grad_(n) for x, n in zip((q, k, v), need, strict=True)]
    mine = [
        x[:, :, s].clone().requires_grad_(n)
        for x, s, n in zip((q, k, v), (rows, cols, cols), need, strict=True)
    ]
    m_mine = None if m_ring is None else (m_ring if m_ring.shape[2] == 1 else m_ring[:, :, rows])
    sizes = ks if pass_sizes else None

    def ring(q_, k_, v_):
        return ring_attention(q_, k_, v_, m_mine, group=group, sizes=sizes)

    if mode == "checkpoint":
        ref = _sdpa_twice(*full, m)
        out = checkpoint(lambda *x: ring(ring(*x), *x[1:]), *mine, use_reentrant=False)
    elif mode == "nograd":
        with torch.no_grad():
            ref = F.scaled_dot_product_attention(*full, attn_mask=m)
            out = ring(*mine)
        assert out.grad_fn is None and not out.requires_grad
    else:
        ref = F.scaled_dot_product_attention(*full, attn_mask=m)
        out = ring(*mine)
    expect = ref.detach().clone()
    if dead:
        expect[:, :, 0] = 0
    errors = {"out": (out.detach() - expect[:, :, rows]).abs().max().item()}
    if mode != "nograd":
        (ref * w).sum().backward()
        (out * w[:, :, rows]).sum().backward()
        for name, a, b, s in zip("qkv", mine, full, (rows, cols, cols), strict=True):
            if b.requires_grad:
                errors[f"d{name}"] = (a.grad - b.grad[:, :, s]).abs().max().item()
            else:
                assert a.grad is None
    return errors


def _world(world: int) -> dict:
    """Every case for this world size on this rank: {case: {name: error}}."""
    w = dist.group.WORLD
    if world == 2:
        return {
            "even_nomask": _case(w, (5, 4), (5, 4), mask="none"),
            "keys_gathered_sizes": _case(w, (5, 4), (5, 4), mask="keys", pass_sizes=False),
            "lq_ne_lk_heads1": _case(w, (3, 6), (5, 4), heads=1, mask="full"),
            "checkpoint": _case(w, (5, 4), (5, 4), mask="keys", mode="checkpoint"),
            "nograd": _case(w, (5, 4), (4, 5), mask="full", mode="nograd"),
            "q_only": _case(w, (5, 4), (5, 4), mask="keys", mode="q_only"),
            "kv_only": _case(w, (2, 3), (5, 4), mask="full", mode="kv_only"),
        }
    if world == 3:
        return {
            "uneven_heads1": _case(w, (2, 2, 3), (3, 1, 2), heads=1, mask="full"),
            "uneven_keys_dv5": _case(w, (2, 2, 3), (3, 1, 2), mask="keys", dv=5, pass_sizes=False),
            "checkpoint": _case(w, (3, 1, 2), (3, 1, 2), mask="full", mode="checkpoint"),
            "dead_row": _case(w, (2, 2, 3), (1, 4, 2), mask="full", dead=True),
        }
    # world 4: the whole world, and two sub-groups {0, 2} and {1, 3} (global ids differ from group ranks)
    subs = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    sub = subs[dist.get_rank() % 2]
    return {
        "uneven4_keys": _case(w, (1, 2, 3, 2), (2, 3, 1, 4), mask="keys"),
        "uneven4_checkpoint": _case(w, (2, 2, 1, 3), (2, 3, 1, 4), heads=1, mask="full", mode="checkpoint"),
        "subgroup": _case(sub, (3, 3), (4, 2), mask="full", seed=dist.get_rank() % 2),
    }


def _assert_close(results: list[dict]) -> None:
    for rank, cases in enumerate(results):
        for case, errors in cases.items():
            for name, err in errors.items():
                assert err < TOL, f"rank {rank} {case} {name}: {err}"


@pytest.mark.slow
def test_ring_world_2():
    _assert_close(run_gloo(_world, 2, 2))


@pytest.mark.slow
def test_ring_world_3_uneven():
    _assert_close(run_gloo(_world, 3, 3))


@pytest.mark.slow
def test_ring_world_4_and_subgroups():
    _assert_close(run_gloo(_world, 4, 4))


# --- one process, no spawn ---


@pytest.mark.parametrize("mask", ["none", "keys", "full"])
@pytest.mark.parametrize("mode", ["plain", "checkpoint", "nograd", "q_only", "kv_only"])
def test_single_process_equals_sdpa(mask, mode):
    assert all(
        e < TOL
        for e in _case(None, (7,), (5,), mask=mask, mode=mode, dv=3 if mode != "checkpoint" else 4).values()
    )


def test_single_process_fully_masked_row_is_zero():
    """A query row with nothing to attend to gives output 0 and zero gradients (SDPA gives NaN there)."""
    assert all(e < TOL for e in _case(None, (6,), (5,), mask="full", dead=True).values())
    q, k, v, _, m = _data(1, 1, 2, 3, 4, 4, 4, "full")
    m[:, :, 1] = False
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = ring_attention(q, k, v, m)
    assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
    out.sum().backward()
    assert torch.equal(q.grad[:, :, 1], torch.zeros_like(q.grad[:, :, 1]))
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_attention_block_merge_of_two_halves_equals_one_block():
    q, k, v, _, m = _data(2, 2, 3, 5, 8, 4, 6, "full")
    m[0, 0, 1, :4] = False  # row fully masked in the first half only
    m[1, 2, 3] = False  # row fully masked in both halves
    out, lse = attention_block(q, k, v, m)
    a = attention_block(q, k[:, :, :4], v[:, :, :4], m[..., :4])
    b = attention_block(q, k[:, :, 4:], v[:, :, 4:], m[..., 4:])
    assert a[1][0, 0, 1] == float("-inf") and torch.equal(a[0][0, 0, 1], torch.zeros(6, dtype=F64))
    merged, merged_lse = merge_blocks(*a, *b)
    assert (merged - out).abs().max() < TOL and torch.equal(torch.isneginf(merged_lse), torch.isneginf(lse))
    finite = torch.isfinite(lse)
    assert (merged_lse[finite] - lse[finite]).abs().max() < TOL
    assert lse[1, 2, 3] == float("-inf") and torch.equal(out[1, 2, 3], torch.zeros(6, dtype=F64))
    assert not torch.isnan(merged).any()
    ref_lse = torch.logsumexp((q @ k.transpose(-2, -1) / 2).masked_fill(~m, float("-inf")), -1)  # d = 4
    assert (lse[finite] - ref_lse[finite]).abs().max() < TOL
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert (out[finite] - ref[finite]).abs().max() < TOL


def test_float32_and_bad_arguments():
    q, k, v, _, m = _data(3, 1, 2, 4, 6, 8, 8, "keys")
    q, k, v = (x.float() for x in (q, k, v))
    out = ring_attention(q, k, v, m)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, attn_mask=m), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(TypeError, match="bool"):
        ring_attention(q, k, v, m.float())
    with pytest.raises(ValueError, match="sizes"):
        ring_attention(q, k, v, sizes=[5])
    with pytest.raises(ValueError, match="last dim"):
        ring_attention(q, k, v, m[..., :5])
