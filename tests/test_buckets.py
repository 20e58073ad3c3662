"""Tests for longvideo.data.buckets.BucketSampler: one shape per rank batch, coverage, determinism, resume."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import numpy as np
import pytest

from longvideo.data.buckets import BucketSampler
from longvideo.errors import UserError

A, B, C, D = (33, 64, 64), (17, 64, 64), (17, 32, 64), (1, 64, 64)


def random_keys(n: int, seed: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    shapes = [A, B, C, D]
    return [shapes[j] for j in rng.choice(4, n, p=[0.2, 0.4, 0.1, 0.3])]


def rank_slices(batch: list[int], s: BucketSampler) -> list[list[int]]:
    return [batch[r * s.batch_size : (r + 1) * s.batch_size] for r in range(s.world_size)]


@pytest.mark.parametrize(("batch_size", "world_size"), [(1, 1), (4, 1), (3, 2), (2, 4)])
def test_every_rank_batch_has_one_shape(batch_size, world_size):
    keys = random_keys(101, seed=batch_size)
    s = BucketSampler(keys, batch_size, world_size, seed=7)
    assert s.num_batches_per_epoch == 101 // (batch_size * world_size)
    for epoch in range(3):
        batches = s.epoch_batches(epoch)
        assert len(batches) == s.num_batches_per_epoch
        for batch in batches:
            assert len(batch) == batch_size * world_size
            for rank_batch in rank_slices(batch, s):
                assert len({keys[i] for i in rank_batch}) == 1


def test_coverage_at_most_once_except_replacements():
    keys = random_keys(200, seed=1)
    s = BucketSampler(keys, 4, 2, seed=0)
    counts = Counter(i for batch in s.epoch_batches(0) for i in batch)
    slots = s.num_batches_per_epoch * s.global_batch_size
    duplicates = sum(c - 1 for c in counts.values())
    # each replaced minority item frees one slot that a duplicate of the majority shape fills
    assert len(counts) + duplicates == slots
    assert duplicates < slots // 4  # shapes are sorted into runs, so replacement is rare
    # duplicates come from the item's own megabatch: all copies of an index sit in one global batch
    where: dict[int, set[int]] = {}
    for b, batch in enumerate(s.epoch_batches(0)):
        for i in batch:
            where.setdefault(i, set()).add(b)
    assert all(len(bs) == 1 for bs in where.values())


def test_no_replacement_when_shapes_fill_batches():
    keys = [A] * 12 + [B] * 8 + [D] * 4  # every shape count a multiple of the batch size
    s = BucketSampler(keys, batch_size=4, world_size=1, seed=3)
    for epoch in range(3):
        flat = [i for batch in s.epoch_batches(epoch) for i in batch]
        assert sorted(flat) == list(range(24))  # every item exactly once


def test_minority_items_replaced_by_majority_duplicates():
    keys = [A, A, A, B]  # one megabatch of 4, world 1: the lone B is replaced by a duplicate A
    (batch,) = BucketSampler(keys, batch_size=4).epoch_batches(0)
    assert 3 not in batch and sorted(set(batch)) == [0, 1, 2] and len(batch) == 4


def test_deterministic_per_epoch_and_epochs_differ():
    keys = random_keys(64, seed=2)
    s1, s2 = BucketSampler(keys, 4, 2, seed=11), BucketSampler(keys, 4, 2, seed=11)
    for epoch in range(3):
        assert s1.epoch_batches(epoch) == s2.epoch_batches(epoch)
    assert s1.epoch_batches(0) != s1.epoch_batches(1)
    assert s1.epoch_batches(0) != BucketSampler(keys, 4, 2, seed=12).epoch_batches(0)
    # same shape everywhere: the order alone must differ between epochs
    same = BucketSampler([A] * 32, 4)
    assert same.epoch_batches(0) != same.epoch_batches(1)
    assert sorted(np.concatenate(same.epoch_batches(0))) == sorted(np.concatenate(same.epoch_batches(1)))


def test_batch_at_matches_epoch_lists_and_resumes():
    keys = random_keys(50, seed=4)
    s = BucketSampler(keys, 3, 2, seed=5)
    nb = s.num_batches_per_epoch
    expected = [(e, b) for e in range(3) for b in BucketSampler(keys, 3, 2, seed=5).epoch_batches(e)]
    assert [s.batch_at(step) for step in range(3 * nb)] == expected
    resumed = BucketSampler(keys, 3, 2, seed=5)  # a fresh process: state is the step alone
    assert resumed.batch_at(nb + 2) == expected[nb + 2]


def test_world_size_two_splits_global_batches():
    keys = random_keys(40, seed=6)
    s = BucketSampler(keys, 2, 2, seed=0)
    steps = 2 * s.num_batches_per_epoch + 1  # across an epoch boundary
    start = 3
    r0 = list(islice(s.rank_batches(0, start_step=start), steps))
    r1 = list(islice(s.rank_batches(1, start_step=start), steps))
    for k in range(steps):
        _, batch = s.batch_at(start + k)
        assert r0[k] + r1[k] == batch and len(r0[k]) == len(r1[k]) == 2
    epoch, batch = s.batch_at(start)
    assert next(s.rank_batches(1, start, with_epoch=True)) == [(i, epoch) for i in batch[2:4]]


def test_keep_last_partial_megabatch():
    keys = [A] * 6 + [D] * 4  # 10 items, global batch 4: A A A A | A A D D | D D (tail, kept)
    s = BucketSampler(keys, 2, 2, drop_last=False)
    assert s.num_batches_per_epoch == 3
    flat = [i for batch in s.epoch_batches(0) for i in batch]
    assert set(flat) == set(range(10)) and len(flat) == 12  # the tail is filled up with duplicates
    assert BucketSampler(keys, 2, 2).num_batches_per_epoch == 2
    for batch in s.epoch_batches(0):
        assert all(len({keys[i] for i in rb}) == 1 for rb in rank_slices(batch, s))


def test_bad_arguments():
    with pytest.raises(UserError, match="no global batch"):
        BucketSampler([A] * 3, batch_size=2, world_size=2)
    with pytest.raises(UserError, match=">= 1"):
        BucketSampler([A] * 3, batch_size=0)
    with pytest.raises(UserError, match="rank"):
        BucketSampler([A] * 4, 2, 2).rank_batches(2)
