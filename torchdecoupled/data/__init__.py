"""Datasets, all held in memory, and deterministic mini-batches.

`load_dataset(name, root, seed, **kwargs)` looks the name up in a plain dict. Nothing is downloaded:
"digits" ships with scikit-learn, "mnist1d" is generated offline (and cached), "synthetic" is random;
"cifar10", "cifar100" and "mnist" are read from files under `root`.
"""

from __future__ import annotations

from typing import Any, Callable

from torchdecoupled.data.augment import CropFlip, random_crop_flip
from torchdecoupled.data.batches import Batches, eval_batches
from torchdecoupled.data.cifar import load_cifar
from torchdecoupled.data.dataset import Dataset, cache_dir, data_root
from torchdecoupled.data.digits import load_digits
from torchdecoupled.data.mnist import load_mnist
from torchdecoupled.data.mnist_1d import load_mnist1d
from torchdecoupled.data.synthetic import load_synthetic


def _no_root(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
    return lambda root, seed, **kwargs: loader(**kwargs)


# name -> loader(root, seed, **kwargs)
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _no_root(load_digits),
    "mnist1d": _no_root(load_mnist1d),
    "synthetic": lambda root, seed, **kwargs: load_synthetic(seed=seed, **kwargs),
    "cifar10": lambda root, seed, **kwargs: load_cifar("cifar10", root, **kwargs),
    "cifar100": lambda root, seed, **kwargs: load_cifar("cifar100", root, **kwargs),
    "mnist": lambda root, seed, **kwargs: load_mnist(root, **kwargs),
}


def load_dataset(name: str, root: str | None = None, seed: int = 0, **kwargs: Any) -> Dataset:
    """Load dataset `name` into memory.

    `root` is where downloaded datasets live (default $TORCHDECOUPLED_DATA, else ./data); `seed` only
    affects datasets that are random ("synthetic"); test sets never depend on it. Extra keyword
    arguments go to the loader, e.g. `in_shape`, `n_train`, `n_test`, `num_classes` for "synthetic".
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (valid: {', '.join(sorted(DATASETS))})")
    return DATASETS[name](root, seed, **kwargs)


__all__ = [
    "Batches",
    "CropFlip",
    "DATASETS",
    "Dataset",
    "cache_dir",
    "data_root",
    "eval_batches",
    "load_dataset",
    "random_crop_flip",
]
