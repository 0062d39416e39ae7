"""Seeded random data (Gaussian inputs, uniform random labels) for speed runs: nothing to learn."""

from __future__ import annotations

import torch

from torchdecoupled.data.dataset import Dataset


def load_synthetic(
    seed: int = 0,
    in_shape: tuple[int, ...] = (3, 32, 32),
    n_train: int = 1024,
    n_test: int = 256,
    num_classes: int = 10,
) -> Dataset:
    """Standard-normal inputs of shape (n, *in_shape) and labels in [0, num_classes), drawn from `seed`."""
    in_shape = tuple(int(s) for s in in_shape)
    if n_train < 1 or n_test < 1 or num_classes < 1 or not in_shape or min(in_shape) < 1:
        raise ValueError(
            f"synthetic data needs positive sizes, got n_train={n_train}, n_test={n_test}, "
            f"num_classes={num_classes}, in_shape={in_shape}"
        )
    g = torch.Generator().manual_seed(seed)
    train_x = torch.randn((n_train, *in_shape), generator=g)
    train_y = torch.randint(num_classes, (n_train,), generator=g)
    test_x = torch.randn((n_test, *in_shape), generator=g)
    test_y = torch.randint(num_classes, (n_test,), generator=g)
    return Dataset("synthetic", train_x, train_y, test_x, test_y, num_classes, in_shape)
