"""Length-bucketed batch sampler with a padded-sample budget, DDP sharding and mid-epoch resume."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of indices of similar length whose padded size stays within a budget.

    A batch satisfies ``max(lengths) * len(batch) <= max_batch_samples`` and
    ``len(batch) <= max_batch_size`` (when given). An utterance longer than the budget on its
    own is NOT dropped: it forms a batch of one (logged once per epoch), so every utterance is
    seen exactly once per epoch; crop long utterances upstream if memory is tight.

    Per epoch (``set_epoch``), with ``shuffle``: indices are sorted by length with a small
    multiplicative jitter (seeded by ``seed + epoch``) so batch contents vary between epochs,
    packed greedily, and the batch order is shuffled. Without ``shuffle`` batches follow
    ascending length.

    DDP: batch ``i`` goes to rank ``i % num_replicas``. So every rank gets the same number of
    batches (DDP needs it), batches with the most items are split in two until the count is
    a multiple of ``num_replicas``; the ranks' batches thus partition the epoch.

    Resume: ``state_dict(batches_consumed)`` records how many of this rank's batches the
    trainer has processed (pass it explicitly when a DataLoader prefetches); after
    ``load_state_dict`` the next iteration yields only the remaining batches of that epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_batch_samples: int,
        max_batch_size: int | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        length_jitter: float = 0.05,
    ) -> None:
        if max_batch_samples <= 0:
            raise ValueError(f"max_batch_samples must be > 0, found {max_batch_samples}")
        if max_batch_size is not None and max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be > 0 or None, found {max_batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), found {rank}")
        if len(lengths) < num_replicas:
            raise ValueError(
                f"need >= {num_replicas} utterances (one per replica), found {len(lengths)}"
            )
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.max_batch_samples = int(max_batch_samples)
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.length_jitter = length_jitter
        self.epoch = 0
        self._start = 0  # batches to skip in the next iteration (resume)
        self._yielded = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle to use; clears any pending resume offset."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        """Every batch of the current epoch, all ranks, in order (cached per epoch)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        keys = self.lengths.double()
        if self.shuffle and self.length_jitter > 0:
            noise = torch.rand(len(keys), generator=g, dtype=torch.float64) * 2 - 1
            keys = keys * (1 + self.length_jitter * noise)
        order = torch.sort(keys, stable=True).indices.tolist()
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        oversize = 0
        for i in order:
            n = int(self.lengths[i])
            new_longest = max(longest, n)
            fits = new_longest * (len(current) + 1) <= self.max_batch_samples
            if self.max_batch_size is not None:
                fits = fits and len(current) < self.max_batch_size
            if current and not fits:
                batches.append(current)
                current, longest, new_longest = [], 0, n
            current.append(i)
            longest = new_longest
            oversize += n > self.max_batch_samples
        if current:
            batches.append(current)
        if oversize:
            logger.warning(
                "%d utterance(s) longer than max_batch_samples=%d form single-item batches",
                oversize,
                self.max_batch_samples,
            )
        while len(batches) % self.num_replicas:
            j = max(range(len(batches)), key=lambda k: len(batches[k]))
            if len(batches[j]) < 2:
                raise ValueError(
                    f"cannot split {len(batches)} batches over {self.num_replicas} replicas"
                )
            b = batches.pop(j)
            batches[j:j] = [b[: len(b) // 2], b[len(b) // 2 :]]
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[p] for p in perm]
        self._cache = (self.epoch, batches)
        return batches

    def rank_batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (before any resume offset)."""
        return self._all_batches()[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        """Number of this rank's batches in the current epoch (a full epoch, not the remainder)."""
        return len(self.rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        start, self._start = self._start, 0
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield list(batch)

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """Position within the epoch; `batches_consumed` defaults to the batches yielded so far."""
        consumed = self._yielded if batches_consumed is None else int(batches_consumed)
        return {"epoch": self.epoch, "seed": self.seed, "batches_consumed": consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next `__iter__` of epoch `state["epoch"]` skips the consumed batches."""
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"sampler seed mismatch: checkpoint {state['seed']}, sampler {self.seed}"
            )
        self.epoch = int(state["epoch"])
        self._start = int(state["batches_consumed"])
