"""The in-memory dataset record the loaders return (the image folder streams: folder.py), and where
loaders look for files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

# fn(x_batch, generator) -> x_batch, applied to training batches only.
Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class Dataset:
    """A whole dataset in memory: float32 inputs of shape (N, *in_shape), int64 labels in [0, num_classes)."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    in_shape: tuple[int, ...]
    augment: Optional[Augment] = None

    def __post_init__(self) -> None:
        self.in_shape = tuple(int(s) for s in self.in_shape)
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.dtype != torch.float32 or y.dtype != torch.int64:
                raise ValueError(f"{self.name} {split}: need float32 inputs and int64 labels, got {x.dtype}, {y.dtype}")
            if tuple(x.shape[1:]) != self.in_shape:
                raise ValueError(
                    f"{self.name} {split}: inputs of shape {tuple(x.shape)} do not match in_shape {self.in_shape}"
                )
            if y.shape != (x.shape[0],):
                raise ValueError(f"{self.name} {split}: {x.shape[0]} inputs but labels of shape {tuple(y.shape)}")

    def validation(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """The test set as ``Pipeline.fit``'s ``val_data``: (inputs in ``dtype``, labels)."""
        return self.test_x.to(dtype), self.test_y

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"in_shape={self.in_shape}, num_classes={self.num_classes}, augment={self.augment is not None})"
        )


def data_root(root: Optional[str]) -> str:
    """The directory to read downloaded datasets from: `root`, else $TORCHDECOUPLED_DATA, else ./data."""
    if root is not None:
        return os.path.expanduser(str(root))
    return os.path.expanduser(os.environ.get("TORCHDECOUPLED_DATA", "data"))


def cache_dir() -> str:
    """The directory for generated data: $TORCHDECOUPLED_CACHE, else ~/.cache/torchdecoupled."""
    return os.path.expanduser(os.environ.get("TORCHDECOUPLED_CACHE", "~/.cache/torchdecoupled"))
