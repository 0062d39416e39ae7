"""Deterministic, random-access mini-batches.

Training streams batches across epochs under one global batch index b = 0, 1, 2, ... (the index a
schedule's actions carry). Batch b is a pure function of (seed, b): the shuffle of epoch e depends
only on (seed, e) and the augmentation of batch b only on (seed, b), each from its own
torch.Generator (never the global RNG). So any process can load any batch, in any order, and get
exactly what a single-process run gets.

    epoch 0: perm_0 = randperm(n | seed, 0)   batches 0 .. P-1   = perm_0 cut into runs of batch_size
    epoch 1: perm_1 = randperm(n | seed, 1)   batches P .. 2P-1  ...
"""

from __future__ import annotations

import operator
from typing import Iterator, Optional

import torch
from torch import Tensor

from torchdecoupled.data.dataset import Augment

_MASK64 = (1 << 64) - 1
_SHUFFLE, _AUGMENT = 1, 2  # independent random streams


def _mix64(z: int) -> int:
    """SplitMix64 finalizer: a bijection on 64-bit integers that scrambles every bit."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def stream_seed(seed: int, stream: int, index: int) -> int:
    """A generator seed in [0, 2**63) determined by (seed, stream, index) alone."""
    z = _mix64(_mix64(_mix64(seed & _MASK64) ^ stream) ^ (index & _MASK64))
    return z >> 1


class Batches:
    """Deterministic random-access mini-batches streamed across epochs: global batch index b -> (x, y)."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        seed: int,
        drop_last: bool = False,
        augment: Optional[Augment] = None,
        shuffle: bool = True,
    ):
        n = len(x)
        if len(y) != n:
            raise ValueError(f"x and y have different lengths (x: {n}, y: {len(y)})")
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size must be in [1, {n}] (the dataset size), got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.augment = augment
        self.shuffle = bool(shuffle)
        self.per_epoch = n // self.batch_size if drop_last else -(-n // self.batch_size)
        self._epoch: Optional[int] = None  # cached permutation of the last epoch used
        self._perm: Optional[Tensor] = None

    def __repr__(self) -> str:
        return (
            f"Batches(n={len(self.x)}, batch_size={self.batch_size}, per_epoch={self.per_epoch}, "
            f"seed={self.seed}, drop_last={self.drop_last}, shuffle={self.shuffle}, augment={self.augment})"
        )

    def epoch_of(self, b: int) -> int:
        """The epoch that global batch `b` belongs to."""
        return self._check(b) // self.per_epoch

    def permutation(self, epoch: int) -> Tensor:
        """The sample order of `epoch` (the identity when shuffle=False)."""
        if epoch != self._epoch:
            n = len(self.x)
            if self.shuffle:
                g = torch.Generator().manual_seed(stream_seed(self.seed, _SHUFFLE, epoch))
                self._perm = torch.randperm(n, generator=g)
            else:
                self._perm = torch.arange(n)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices(self, b: int) -> Tensor:
        """Sample indices of global batch `b`; the last batch of an epoch is short unless drop_last."""
        epoch, k = divmod(self._check(b), self.per_epoch)
        return self.permutation(epoch)[k * self.batch_size : (k + 1) * self.batch_size]

    def get(self, b: int) -> tuple[Tensor, Tensor]:
        """(x, y) of global batch `b`, with x augmented (deterministically in (seed, b)) if augment is set."""
        idx = self.indices(b)
        x, y = self.x[idx], self.y[idx]
        if self.augment is not None:
            g = torch.Generator().manual_seed(stream_seed(self.seed, _AUGMENT, b))
            x = self.augment(x, g)
        return x, y

    def _check(self, b: int) -> int:
        try:
            i = operator.index(b)
        except TypeError:
            raise TypeError(f"batch index must be an integer, got {b!r}") from None
        if i < 0:
            raise ValueError(f"batch index must be non-negative, got {i}")
        return i


def eval_batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Sequential, unshuffled, unaugmented batches covering every sample once (the last may be short)."""
    if len(x) != len(y):
        raise ValueError(f"x and y have different lengths (x: {len(x)}, y: {len(y)})")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
