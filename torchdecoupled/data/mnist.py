"""MNIST (LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition",
1998) read from the original IDX files, plain or gzipped, in a local directory; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import torch

from torchdecoupled.data.dataset import Dataset, data_root

FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
SUBDIRS = ("", "mnist", "MNIST/raw")  # plain, and the torchvision layout
MEAN, STD = 0.1307, 0.3081
URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (magic: two zero bytes, a type byte, a dimension count; big-endian sizes)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes) but {len(data) - offset} bytes follow")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: str, name: str) -> str | None:
    for sub in SUBDIRS:
        for suffix in ("", ".gz"):
            path = os.path.join(root, sub, name + suffix)
            if os.path.isfile(path):
                return path
    return None


def load_mnist(root: str | None = None) -> Dataset:
    """MNIST as (N, 1, 28, 28) float32 inputs normalized with mean 0.1307 and std 0.3081."""
    root = data_root(root)
    paths = {}
    for key, name in FILES.items():
        path = _find(root, name)
        if path is None:
            raise FileNotFoundError(
                f"MNIST not found under {root!r}: expected {os.path.join(root, name)}[.gz] (also looked in "
                f"{', '.join(os.path.join(root, s) for s in SUBDIRS if s)}); download the four files from "
                f"{URL} (e.g. {URL}{name}.gz) into that directory, then pass --data-root {root}"
            )
        paths[key] = path
    arrays = {key: read_idx(path) for key, path in paths.items()}

    def inputs(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(a).float() / 255.0 - MEAN) / STD).unsqueeze(1)

    return Dataset(
        name="mnist",
        train_x=inputs(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=inputs(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        num_classes=10,
        in_shape=(1, 28, 28),
    )
