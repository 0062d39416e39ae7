"""MNIST and Fashion-MNIST read from the original IDX files, plain or gzipped, in a local directory.

MNIST: LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition" (1998).
Fashion-MNIST: Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms" (2017), github.com/zalandoresearch/fashion-mnist: the same four file names and
formats (28x28 grey images, 10 classes). Files are fetched only by `download.download` (--download).
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
# Per dataset: where under the root the files may be (plain, ours after --download, torchvision's),
# the training set's mean and std of pixel/255 (Fashion-MNIST: computed over its 60,000 training
# images, as commonly quoted), and the official download page.
SPECS = {
    "mnist": dict(
        title="MNIST", subdirs=("", "mnist", "MNIST/raw"), mean=0.1307, std=0.3081,
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "fashion_mnist": dict(
        title="Fashion-MNIST", subdirs=("", "fashion_mnist", "fashion-mnist", "FashionMNIST/raw"),
        mean=0.2860, std=0.3530, url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (magic: two zero bytes, a type byte, a dimension count; big-endian sizes)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        raise ValueError(f"{path}: cannot read it as a gzipped IDX file ({e}); download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: the IDX header announces {ndim} dimensions but the file has {len(data)} bytes")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes) but {len(data) - offset} bytes follow")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: str, name: str, subdirs: tuple[str, ...]) -> str | None:
    for sub in subdirs:
        for suffix in ("", ".gz"):
            path = os.path.join(root, sub, name + suffix)
            if os.path.isfile(path):
                return path
    return None


def _read_arrays(spec: dict, root: str) -> dict[str, np.ndarray]:
    """The four arrays, each checked: images (N, 28, 28), labels (N,) with as many rows as the images."""
    paths = {}
    for key, name in FILES.items():
        path = _find(root, name, spec["subdirs"])
        if path is None:
            url = spec["url"]
            raise FileNotFoundError(
                f"{spec['title']} not found under {root!r}: expected {os.path.join(root, name)}[.gz] (also looked "
                f"in {', '.join(os.path.join(root, s) for s in spec['subdirs'] if s)}); download the four files "
                f"from {url} (e.g. {url}{name}.gz) into that directory, then pass --data-root {root} "
                f"(or pass --download)"
            )
        paths[key] = path
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"{paths[split + '_x']}: expected images of shape (N, 28, 28), got {x.shape}")
        if y.shape != (len(x),):
            raise ValueError(f"{paths[split + '_y']}: expected {len(x)} labels (one per image in "
                             f"{paths[split + '_x']}), got shape {y.shape}")
        if y.size and not 0 <= y.min() <= y.max() < 10:
            raise ValueError(f"{paths[split + '_y']}: labels must be in [0, 10), got {y.min()} .. {y.max()}")
    return arrays


def load_mnist(root: str | None = None, name: str = "mnist") -> Dataset:
    """MNIST ("mnist") or Fashion-MNIST ("fashion_mnist") as (N, 1, 28, 28) float32 inputs, standardized
    with the training set's mean and std."""
    spec = SPECS[name]
    arrays = _read_arrays(spec, data_root(root))

    def inputs(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(a).float() / 255.0 - spec["mean"]) / spec["std"]).unsqueeze(1)

    return Dataset(
        name=name,
        train_x=inputs(arrays["train_x"]),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=inputs(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        num_classes=10,
        in_shape=(1, 28, 28),
    )
