"""scikit-learn's handwritten digits (1797 images, 1x8x8, 10 classes) for second-long experiments.

Alpaydin, Kaynak, "Optical Recognition of Handwritten Digits" (UCI, 1998), as shipped with
scikit-learn (`sklearn.datasets.load_digits`). The train/test split comes from a fixed seed, so the
test set is the same in every run whatever the run's seed.
"""

from __future__ import annotations

import torch

from torchdecoupled.data.dataset import Dataset

SPLIT_SEED = 0  # fixed: the test set never depends on the run seed


def load_digits(test_fraction: float = 0.2) -> Dataset:
    """Pixels scaled to [0, 1], then standardized with the training set's mean and std (one scalar each)."""
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: sklearn is slow to import

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    raw = sk_load_digits()
    x = torch.as_tensor(raw.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.as_tensor(raw.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = round(test_fraction * len(y))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    train_x, test_x = x[train_idx], x[test_idx]
    mean, std = train_x.mean(), train_x.std()
    return Dataset(
        name="digits",
        train_x=(train_x - mean) / std,
        train_y=y[train_idx],
        test_x=(test_x - mean) / std,
        test_y=y[test_idx],
        num_classes=10,
        in_shape=(1, 8, 8),
    )
