"""MNIST-1D: 1D signals of length 40 drawn from ten digit templates, generated offline.

Greydanus, "Scaling down deep learning" (2020), github.com/greydanus/mnist1d. The `mnist1d` package
generates the standard set (4000 train / 1000 test, seed 42) in about a second; the arrays are cached
as .npz under `cache_dir()` (keyed by the generation arguments), so later loads are instant.
Reference test accuracy: logistic 32%, MLP 68%, CNN 94%, GRU 91%.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Any

import numpy as np
import torch

from torchdecoupled.data.dataset import Dataset, cache_dir


# mnist1d.data.get_dataset_args() of mnist1d 0.0.2+ (the standard MNIST-1D), kept here so that a
# cached load needs no mnist1d import (it pulls in scipy and matplotlib: about 2 s).
DEFAULT_ARGS: dict[str, Any] = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
}


def _generation_args(overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(DEFAULT_ARGS))
    if unknown:
        raise ValueError(f"unknown mnist1d argument(s) {', '.join(unknown)} (valid: {', '.join(sorted(DEFAULT_ARGS))})")
    return {**DEFAULT_ARGS, **overrides}


def _generate(args: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run mnist1d's generator without disturbing the caller's global numpy / random state."""
    from mnist1d.data import get_dataset_args, make_dataset  # lazy: slow to import
    from mnist1d.utils import ObjectView

    full = {**get_dataset_args(as_dict=True), **args}
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(ObjectView(full))  # it calls np.random.seed(args['seed'])
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _cache_path(args: dict[str, Any]) -> str:
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_dir(), f"mnist1d_{key}.npz")


def load_mnist1d(cache: bool = True, **overrides: Any) -> Dataset:
    """The MNIST-1D arrays as (N, 1, 40) float32 inputs; `overrides` change mnist1d's dataset args."""
    args = _generation_args(overrides)
    path = _cache_path(args)
    if cache and os.path.exists(path):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    else:
        arrays = _generate(args)
        if cache:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npz"
            np.savez(tmp, **arrays)
            os.replace(tmp, path)  # atomic: concurrent processes never read a half-written file

    def inputs(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32).reshape(len(a), 1, -1)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64)

    train_x = inputs(arrays["x"])
    return Dataset(
        name="mnist1d",
        train_x=train_x,
        train_y=labels(arrays["y"]),
        test_x=inputs(arrays["x_test"]),
        test_y=labels(arrays["y_test"]),
        num_classes=10,
        in_shape=tuple(train_x.shape[1:]),
    )
