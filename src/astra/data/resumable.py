"""A shuffling sampler that can start an epoch part-way through, so a resumed run sees the same batches.

The permutation of epoch ``e`` depends only on (seed, e), never on how many epochs this process has run, so a
resumed run draws the same order as the uninterrupted one; ``resume_at(epoch, samples)`` skips the samples the
checkpointed run had already trained on, in that epoch only.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    def __init__(self, n_items: int, seed: int):
        self.n_items, self.seed = int(n_items), int(seed)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, samples to skip)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before each epoch
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, samples: int) -> None:
        self._skip = (int(epoch), int(samples))

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_items, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.permutation(self.epoch)
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1] :]
            self._skip = None
        yield from order

    def __len__(self) -> int:
        return self.n_items
