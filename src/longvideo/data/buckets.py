"""Bucket sampler: batches whose items share one shape (T, H, W), the Open-Sora-Plan v1.2 megabatch way.

OSP v1.2's `LengthGroupedSampler` seeds its generator once (42), so every epoch repeats the same order;
here the generator is seeded by (seed, epoch). An epoch, with M = world_size * batch_size:

  1. shuffle all indices (a permutation from the (seed, epoch) generator);
  2. stable-sort them by shape, largest T*H*W first; equal T*H*W sorts by (T, H, W), largest first, so
     every shape is one contiguous run, in shuffled order inside the run;
  3. cut into megabatches of M consecutive indices. drop_last: the last, partial one is dropped;
     otherwise it is kept and the step below fills it up to M;
  4. inside each megabatch, world_size per-rank batches are formed one after the other: each takes the
     shape with the most items not yet placed (ties: the larger shape, as in step 2), takes up to
     batch_size of them in order, and if fewer remain fills the rest with random duplicates of that
     shape's items in this megabatch. Items never placed (minority shapes) are dropped for this epoch:
     they are the ones "replaced" (OSP's `last_group_frame_fun` does the same per GPU batch). Then the
     per-rank batches are shuffled among the ranks;
  5. shuffle the megabatch order.

So every per-rank batch holds a single shape, each index appears at most once per epoch except the
duplicates of step 4, and epoch e is the same list on every run. A global batch is one megabatch:
rank r takes `global_batch[r * batch_size:(r + 1) * batch_size]`. `batch_at(step)` finds the batch of
any global step, so a resumed run needs only its step count to continue with the exact next batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from longvideo.errors import UserError

__all__ = ["BucketSampler"]

Shape = tuple[int, int, int]  # (T, H, W)


class BucketSampler:
    """Single-shape per-rank batches over items with shape keys `keys[i]` = (T, H, W); see the module doc."""

    def __init__(
        self,
        keys: Sequence[Shape],
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1:
            raise UserError(f"batch size and world size must be >= 1, got {batch_size} and {world_size}")
        if seed < 0:
            raise UserError(f"sampler seed must be >= 0, got {seed}")
        self.keys = [tuple(k) for k in keys]
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.drop_last = drop_last
        n, m = len(self.keys), self.global_batch_size
        self.num_batches_per_epoch = n // m if drop_last else -(-n // m)
        if self.num_batches_per_epoch == 0:
            raise UserError(f"{n} items make no global batch of {m} ({world_size} ranks x {batch_size})")
        # step 2's order of the distinct shapes, computed once: _shape_rank[i] = place of item i's shape
        shapes = sorted(set(self.keys), key=lambda k: (-int(np.prod(k)), *(-v for v in k)))
        place = {k: r for r, k in enumerate(shapes)}
        self._shape_rank = np.array([place[k] for k in self.keys], np.int64)
        self._cache: tuple[int, list[list[int]]] | None = None  # (epoch, its batches): batch_at is per step

    @property
    def global_batch_size(self) -> int:
        return self.world_size * self.batch_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch` (each world_size * batch_size indices), in training order."""
        return [list(b) for b in self._epoch(epoch)]  # copies: callers must not edit the cached lists

    def _epoch(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if epoch < 0:
            raise UserError(f"epoch must be >= 0, got {epoch}")
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.keys))  # step 1
        order = perm[np.argsort(self._shape_rank[perm], kind="stable")]  # step 2: shape runs, shuffled inside
        m = self.global_batch_size
        megabatches = [order[s : s + m].tolist() for s in range(0, self.num_batches_per_epoch * m, m)]  # 3
        batches = [self._single_shape(mb, rng) for mb in megabatches]  # step 4
        batches = [batches[j] for j in rng.permutation(len(batches))]  # step 5
        self._cache = (epoch, batches)
        return batches

    def _single_shape(self, megabatch: list[int], rng: np.random.Generator) -> list[int]:
        """One megabatch (<= M indices, in size order) -> M indices, each per-rank slice of one shape."""
        by_shape: dict[Shape, list[int]] = {}
        for i in megabatch:  # dicts keep insertion order: larger shapes first
            by_shape.setdefault(self.keys[i], []).append(i)
        placed = dict.fromkeys(by_shape, 0)  # shape -> how many of its items are in a batch already
        rank_batches = []
        for _ in range(self.world_size):
            # the shape with the most unplaced items; max() keeps the first (larger shape) on ties
            shape = max(by_shape, key=lambda s: len(by_shape[s]) - placed[s])
            items = by_shape[shape]
            batch = items[placed[shape] : placed[shape] + self.batch_size]
            placed[shape] += len(batch)
            short = self.batch_size - len(batch)  # filled with duplicates of this shape's items
            batch += [items[j] for j in rng.integers(0, len(items), short)]
            rank_batches.append(batch)
        return [i for j in rng.permutation(self.world_size) for i in rank_batches[j]]

    def batch_at(self, step: int) -> tuple[int, list[int]]:
        """(epoch, global batch) trained at global step `step` (0-based, counted across epochs)."""
        if step < 0:
            raise UserError(f"step must be >= 0, got {step}")
        epoch, j = divmod(step, self.num_batches_per_epoch)
        return epoch, list(self._epoch(epoch)[j])

    def rank_batches(
        self, rank: int = 0, start_step: int = 0, with_epoch: bool = False
    ) -> Iterator[list[Any]]:
        """Endless per-rank batches from global step `start_step` on: a DataLoader `batch_sampler`.

        with_epoch=True yields (index, epoch) pairs, which `ManifestDataset` takes to draw a fresh random
        clip start every epoch.
        """
        # why: checked here, not in the generator, so a bad rank fails at the call, not at the first next()
        if not 0 <= rank < self.world_size:
            raise UserError(f"rank must be in 0..{self.world_size - 1}, got {rank}")
        if start_step < 0:
            raise UserError(f"start step must be >= 0, got {start_step}")
        return self._rank_batches(rank, start_step, with_epoch)

    def _rank_batches(self, rank: int, step: int, with_epoch: bool) -> Iterator[list[Any]]:
        lo, hi = rank * self.batch_size, (rank + 1) * self.batch_size
        while True:
            epoch, batch = self.batch_at(step)
            yield [(i, epoch) for i in batch[lo:hi]] if with_epoch else batch[lo:hi]
            step += 1
