"""Datasets and deterministic mini-batches.

`load_dataset(name, root, seed, download, **kwargs)` looks the name up in a plain dict. "digits" ships
with scikit-learn, "mnist1d" is generated offline (and cached), "synthetic" is random; "cifar10",
"cifar100", "mnist" and "fashion_mnist" are read into memory from files under `root` (fetched there
first, checksums checked, with download=True); "folder" is a tree of image files streamed from `root`;
"text" is byte-level next-token windows of a UTF-8 file or directory `root` (default: the Python reference
topics every Python ships).
"""

from __future__ import annotations

from typing import Any, Callable

from torchdecoupled.data.augment import CropFlip, random_crop_flip
from torchdecoupled.data.batches import Batches, eval_batches
from torchdecoupled.data.cifar import load_cifar
from torchdecoupled.data.dataset import Dataset, cache_dir, data_root
from torchdecoupled.data.digits import load_digits
from torchdecoupled.data.download import SOURCES, download as download_dataset
from torchdecoupled.data.folder import FolderData, load_folder
from torchdecoupled.data.mnist import load_mnist
from torchdecoupled.data.mnist_1d import load_mnist1d
from torchdecoupled.data.synthetic import load_synthetic
from torchdecoupled.data.text import TextData, load_text


def _no_root(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
    return lambda root, seed, **kwargs: loader(**kwargs)


# name -> loader(root, seed, **kwargs)
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _no_root(load_digits),
    "mnist1d": _no_root(load_mnist1d),
    "synthetic": lambda root, seed, **kwargs: load_synthetic(seed=seed, **kwargs),
    "cifar10": lambda root, seed, **kwargs: load_cifar("cifar10", root, **kwargs),
    "cifar100": lambda root, seed, **kwargs: load_cifar("cifar100", root, **kwargs),
    "mnist": lambda root, seed, **kwargs: load_mnist(root, "mnist", **kwargs),
    "fashion_mnist": lambda root, seed, **kwargs: load_mnist(root, "fashion_mnist", **kwargs),
    "folder": lambda root, seed, **kwargs: load_folder(root, **kwargs),
    "text": lambda root, seed, **kwargs: load_text(root, seed=seed, **kwargs),
}


def load_dataset(
    name: str, root: str | None = None, seed: int = 0, download: bool = False, **kwargs: Any
) -> Dataset | FolderData:
    """Load dataset `name`: into memory (a `Dataset`), or "folder" as a `FolderData` that streams.

    `root` is where downloaded datasets live (default $TORCHDECOUPLED_DATA, else ./data); `seed` only
    affects datasets that are random ("synthetic"; "text": where its training windows start); test sets
    never depend on it. `download`: fetch the files of "mnist", "fashion_mnist", "cifar10" or "cifar100"
    into `root` if they are not there (other datasets have nothing to download).
    Extra keyword arguments go to the loader, e.g. `in_shape`, `n_train`, `n_test`, `num_classes` for
    "synthetic"; `size`, `workers`, `mean`, `std` for "folder"; `context`, `val_fraction` for "text".
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r} (valid: {', '.join(sorted(DATASETS))})")
    if download and name in SOURCES:  # the others have nothing to download
        try:
            return DATASETS[name](root, seed, **kwargs)
        except FileNotFoundError:
            download_dataset(name, data_root(root))
    return DATASETS[name](root, seed, **kwargs)


__all__ = [
    "Batches",
    "CropFlip",
    "DATASETS",
    "Dataset",
    "FolderData",
    "SOURCES",
    "TextData",
    "cache_dir",
    "data_root",
    "download_dataset",
    "eval_batches",
    "load_dataset",
    "load_folder",
    "load_text",
    "random_crop_flip",
]
