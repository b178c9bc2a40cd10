"""Training batches over a weighted mixture of data sets: one group per batch, optional class balance.

A batch must hold samples that share the candidate classes and the number of
frames (the Batch contract), so data sets are grouped by (classes, clip or
image) and every batch comes from one group. Which group, and which samples
inside it, follow the mixture weights and, when asked, inverse class
frequency. Without weights or balancing, each group is shuffled and walked
through without replacement, like an ordinary epoch.

The sampler yields *lists* of indices and is handed to the ``DataLoader`` as
its ``sampler`` (with ``batch_size=None``), so under DDP Lightning's
``DistributedSamplerWrapper`` gives each rank every world-size-th batch of
the same sequence: no ``use_distributed_sampler=False`` needed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)


class DrawnBatch(list):
    """A batch of indices that knows where it was drawn: ``key = (seed, epoch, batch number)``.

    :class:`BatchView` seeds each sample's training randomness from it, so a
    sample is augmented the same way whenever (and in whichever worker) its
    batch is loaded: what makes a resumed run replay the uninterrupted one.
    """

    key: tuple[int, int, int] | None = None


def _drawn(indices: list[int], key: tuple[int, int, int]) -> DrawnBatch:
    batch = DrawnBatch(indices)
    batch.key = key
    return batch


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices, each batch from one group, drawn by weight.

    Args:
        groups: the group id of every sample of the concatenated data set.
        batch_size: samples per batch.
        weights: per-sample sampling weight (mixture weight over data-set size,
            times inverse class frequency when balancing); None for plain shuffling.
        num_batches: batches per epoch (default: samples // batch_size, at least 1).
        seed: with the epoch, fixes the order (:meth:`set_epoch`; otherwise each
            pass over the sampler counts as the next epoch).
    """

    def __init__(
        self,
        groups: Sequence[int],
        batch_size: int,
        weights: Sequence[float] | None = None,
        num_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.groups = np.asarray(groups, dtype=np.int64)
        if self.groups.size == 0:
            raise ValueError("cannot sample batches from an empty data set")
        self.batch_size = batch_size
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and (self.weights.shape != self.groups.shape or (self.weights < 0).any()):
            raise ValueError("weights must be one non-negative number per sample")
        self.num_batches = num_batches or max(1, len(self.groups) // batch_size)
        self.seed = seed
        self.epoch = 0
        self.current_epoch = 0
        self._skip: tuple[int, int] | None = None
        self._members = [np.flatnonzero(self.groups == g) for g in np.unique(self.groups)]

    def skip_to(self, epoch: int, batches: int) -> None:
        """Makes the pass over ``epoch`` start after its first ``batches`` batches (a resumed run)."""
        self._skip = (int(epoch), int(batches))

    def set_epoch(self, epoch: int) -> None:
        """Fixes the epoch the next pass draws for (Lightning calls this each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.current_epoch = self.epoch
        skip = self._skip[1] if self._skip is not None and self._skip[0] == epoch else 0
        self._skip = None
        rng = np.random.default_rng([self.seed, epoch])
        self.epoch += 1
        if self.weights is None:
            mass = np.array([len(m) for m in self._members], dtype=np.float64)
        else:
            mass = np.array([self.weights[m].sum() for m in self._members])
        if mass.sum() <= 0:
            raise ValueError("all sampling weights are zero")
        streams: list[list[int]] = [[] for _ in self._members]
        for number, g in enumerate(rng.choice(len(self._members), size=self.num_batches, p=mass / mass.sum())):
            members = self._members[g]
            if self.weights is None:
                while len(streams[g]) < self.batch_size:  # walk a fresh permutation when one runs out
                    streams[g] += rng.permutation(members).tolist()
                batch, streams[g] = streams[g][: self.batch_size], streams[g][self.batch_size :]
            else:
                w = self.weights[members]
                batch = rng.choice(members, size=self.batch_size, p=w / w.sum()).tolist()
            if number >= skip:  # skipped batches are drawn all the same, so later ones stay the same
                yield _drawn(batch, (self.seed, epoch, number))


class BatchView(Dataset):
    """A data set indexed by lists of indices (what :class:`GroupedBatchSampler` yields).

    For a :class:`DrawnBatch`, each sample is loaded under torch's CPU RNG seeded
    from the batch's key and its place in it (restored afterwards, so the
    caller's RNG does not move): its augmentation depends on where it was drawn, not on which
    worker loads it or what was loaded before.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, indices: list[int]) -> list:
        key = getattr(indices, "key", None)
        if key is None:
            return [self.dataset[i] for i in indices]
        items = []
        outer = torch.get_rng_state()
        try:
            for place, i in enumerate(indices):
                torch.random.default_generator.manual_seed(_draw_seed(key, place))  # CPU only: ~4 us, not ~280
                items.append(self.dataset[i])
        finally:
            torch.set_rng_state(outer)
        return items


def _draw_seed(key: tuple[int, ...], place: int) -> int:
    """A 63-bit seed from where a sample was drawn (a hash: neighbouring keys give unrelated seeds)."""
    digest = hashlib.blake2b(repr((*key, place)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`GroupedBatchSampler` whose position Lightning saves and restores.

    Lightning stores ``state_dict()`` (the epoch and the batches handed out
    in it) in every checkpoint and calls ``load_state_dict`` at resume, so the
    resumed pass continues at the next batch of the same sequence. Exact in
    one process; when a distributed strategy wraps the sampler the resumed
    epoch starts from its beginning (and a warning says so).
    """

    _handed_out = 0

    def __iter__(self) -> Iterator[Any]:
        self._handed_out = 0
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if not isinstance(sampler, GroupedBatchSampler):
            return {}
        return {"epoch": sampler.current_epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        if isinstance(self.sampler, GroupedBatchSampler):
            self.sampler.skip_to(state["epoch"], state["batches"])
        else:
            log.warning("the training sampler is wrapped (%s): the resumed epoch restarts from its first batch",
                        type(self.sampler).__name__)


def mixture_weights(
    sizes: Sequence[int],
    dataset_weights: Sequence[float] | None = None,
    labels: Sequence[Sequence[int]] | None = None,
) -> np.ndarray | None:
    """Per-sample weights of a concatenation of data sets; None when plain shuffling draws the same.

    Args:
        sizes: samples per data set.
        dataset_weights: the share of draws each data set gets (None: in proportion to its size).
        labels: each data set's labels, to balance its classes (None: no balancing; -1 is unlabelled).
    """
    share = [float(n) for n in sizes] if dataset_weights is None else [float(w) for w in dataset_weights]
    if any(w < 0 for w in share):
        raise ValueError(f"mixture weights must not be negative, got {share}")
    per_sample = [w / n if n else 0.0 for w, n in zip(share, sizes, strict=True)]
    if labels is None and len(set(per_sample)) <= 1:
        return None
    parts = []
    for d, n in enumerate(sizes):
        w = np.full(n, per_sample[d])
        if labels is not None:
            w = w * _balance(np.asarray(labels[d], dtype=np.int64))
        parts.append(w)
    return np.concatenate(parts)


def _balance(labels: np.ndarray) -> np.ndarray:
    """Inverse class frequency, scaled to keep the data set's total weight (unlabelled samples keep 1)."""
    out = np.ones(len(labels))
    valid = labels >= 0
    if valid.any():
        inv = 1.0 / np.bincount(labels[valid])[labels[valid]]
        out[valid] = inv * valid.sum() / inv.sum()
    return out
