"""The user's training data as the engines read it: batch b of the run, in order, epoch after epoch.

``LoaderBatches`` wraps any iterable of batches with a length (a ``DataLoader``, shuffled or not, with
workers or not; a list of batches). It iterates the data once per epoch, in order, and keeps each batch
until ``release_before`` says every reader is done with it. A batch is an ``(x, y)`` tuple or list
(more entries are ignored), or a dict whose input and target entries ``keys`` names. x and y may be
tensors or tuples/dicts of tensors.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch.utils.data import DataLoader, Dataset


def as_pair(batch, keys: tuple[str, str] = ("x", "y")) -> tuple:
    """(inputs, targets) of one batch."""
    if isinstance(batch, dict):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"a batch is a dict with keys {sorted(batch)}, but batch_keys={keys!r} names "
                             f"{missing[0]!r}: pass batch_keys=(input key, target key), e.g. "
                             f"batch_keys=({next(iter(batch))!r}, ...)")
        return batch[keys[0]], batch[keys[1]]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"a batch must be an (inputs, targets) pair or a dict (got {type(batch).__name__}"
                     f"{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''})")


def training_data(data, batch_size: int | None = None, seed: int = 0, keys: tuple[str, str] = ("x", "y")):
    """What the engines read: ``data`` itself where it has ``get(b)`` and ``per_epoch`` (the zoo's
    ``Batches``), else ``LoaderBatches``. A ``Dataset`` needs ``batch_size`` and is shuffled by a
    generator seeded with ``seed``."""
    if hasattr(data, "get") and hasattr(data, "per_epoch"):
        return data
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        if batch_size is None:
            raise ValueError(f"fit() got a Dataset ({type(data).__name__}): pass batch_size= too, or a DataLoader")
        data = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    elif batch_size is not None:
        raise ValueError(f"batch_size= is for a Dataset; the data ({type(data).__name__}) already comes in batches")
    return LoaderBatches(data, keys=keys)


class LoaderBatches:
    """Random access by global batch index over an iterable of batches, re-iterated once per epoch."""

    def __init__(self, loader: Iterable, per_epoch: int | None = None, keys: tuple[str, str] = ("x", "y")):
        if per_epoch is None:
            try:
                per_epoch = len(loader)
            except TypeError:
                raise ValueError(f"the training data ({type(loader).__name__}) has no len(): pass a DataLoader, a "
                                 f"list of batches, or an iterable with __len__") from None
        self.loader, self.per_epoch, self.keys = loader, per_epoch, keys
        if self.per_epoch < 1:
            raise ValueError(f"the data has {self.per_epoch} batches per epoch; need at least 1")
        self.cache: dict[int, tuple] = {}
        self.next_b, self.it, self.low = 0, None, 0

    def get(self, b: int):
        while self.next_b <= b:
            if self.next_b % self.per_epoch == 0:
                self.it = iter(self.loader)
            try:
                batch = as_pair(next(self.it), self.keys)
                if self.next_b >= self.low:
                    self.cache[self.next_b] = batch
            except StopIteration:
                raise ValueError(f"the data gave {self.next_b % self.per_epoch} batches in an epoch, fewer than its "
                                 f"length {self.per_epoch}") from None
            self.next_b += 1
        if b not in self.cache:
            raise RuntimeError(f"batch {b} was already released")
        return self.cache[b]

    def close(self) -> None:
        """Stop the loader's worker processes, if it has any (a DataLoader iterator with num_workers > 0)."""
        shutdown = getattr(self.it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self.it = None

    def release_before(self, b: int) -> None:
        self.low = max(self.low, b)
        for old in [k for k in self.cache if k < b]:
            del self.cache[old]
