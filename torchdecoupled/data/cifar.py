"""CIFAR-10 and CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009).

Reads the official python-pickle archives (`cifar-10-batches-py/`, `cifar-100-python/`, fine labels)
or the binary ones (`cifar-10-batches-bin/`, `cifar-100-binary/`) from a local directory (fetched there,
SHA-256 checked, only with --download: download.py). Inputs are normalized with the usual per-channel
training-set mean and std; training batches get the standard random crop (4-pixel padding) and
horizontal flip.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from torchdecoupled.data.augment import CropFlip
from torchdecoupled.data.dataset import Dataset, data_root

# Per dataset: archive layouts (pickle and binary), the label to read (CIFAR-100 binary records carry
# coarse then fine label bytes; we keep the fine one), normalization constants and the download url.
_SPECS = {
    "cifar10": dict(
        title="CIFAR-10",
        py_dir="cifar-10-batches-py", py_train=[f"data_batch_{i}" for i in range(1, 6)], py_test="test_batch",
        bin_dir="cifar-10-batches-bin", bin_train=[f"data_batch_{i}.bin" for i in range(1, 6)],
        bin_test="test_batch.bin", label_key=b"labels", label_bytes=1, num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": dict(
        title="CIFAR-100",
        py_dir="cifar-100-python", py_train=["train"], py_test="test",
        bin_dir="cifar-100-binary", bin_train=["train.bin"], bin_test="test.bin",
        label_key=b"fine_labels", label_bytes=2, num_classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

IMAGE_BYTES = 3 * 32 * 32


class _Arrays(pickle.Unpickler):
    """Unpickles the archive's dicts, lists, bytes and numpy arrays, and nothing else: a crafted file
    cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch does not hold")


def _read_pickle(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _Arrays(f, encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ValueError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e}): expected the official "
                         f"archive's pickled dict with {label_key!r} and b'data' (3072 bytes an image)") from None
    if len(labels) != len(images):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _read_binary(path: str, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + IMAGE_BYTES
    if raw.size % record:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of the {record}-byte CIFAR record")
    raw = raw.reshape(-1, record)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), raw[:, label_bytes - 1].astype(np.int64)


def _read_split(spec: dict, root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels, from the pickle archive if present, else the binary one."""
    py_files = spec["py_train"] if train else [spec["py_test"]]
    bin_files = spec["bin_train"] if train else [spec["bin_test"]]
    py_paths = [os.path.join(root, spec["py_dir"], f) for f in py_files]
    bin_paths = [os.path.join(root, spec["bin_dir"], f) for f in bin_files]
    if all(os.path.isfile(p) for p in py_paths):
        parts = [_read_pickle(p, spec["label_key"]) for p in py_paths]
    elif all(os.path.isfile(p) for p in bin_paths):
        parts = [_read_binary(p, spec["label_bytes"]) for p in bin_paths]
    else:
        missing = next(p for p in py_paths if not os.path.isfile(p))
        raise FileNotFoundError(
            f"{spec['title']} not found under {root!r}: expected {missing} (or the binary version in "
            f"{os.path.join(root, spec['bin_dir'])}); download {spec['url']} and extract it there, "
            f"then pass --data-root {root} (or pass --download)"
        )
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar(name: str, root: str | None = None) -> Dataset:
    """CIFAR-10 ("cifar10") or CIFAR-100 ("cifar100", fine labels) from `root` (see `data_root`)."""
    spec = _SPECS[name]
    root = data_root(root)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)

    def prepare(images: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(images).float().div_(255.0) - mean) / std

    train_images, train_labels = _read_split(spec, root, train=True)
    test_images, test_labels = _read_split(spec, root, train=False)
    black = [(0.0 - m) / s for m, s in zip(spec["mean"], spec["std"])]
    return Dataset(
        name=name,
        train_x=prepare(train_images),
        train_y=torch.from_numpy(train_labels),
        test_x=prepare(test_images),
        test_y=torch.from_numpy(test_labels),
        num_classes=spec["num_classes"],
        in_shape=(3, 32, 32),
        augment=CropFlip(padding=4, fill=black),
    )
