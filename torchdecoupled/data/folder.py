"""A tree of image files, one folder per class, streamed from disk (the layout of ImageNet and of most
user datasets):

    DIR/train/<class>/<image>.png|jpg|...      training images (sub-folders of a class are read too)
    DIR/val/<class>/<image>                    evaluation images (or DIR/test/)

Only the file list is held in memory: a DataLoader's workers open, decode (Pillow), resize and augment
each image as it is read. Classes are the train folder's sub-folders sorted by name (label k is the k-th);
a val class must be one of them. Every image becomes 3 x size x size: its shorter side resized to `size`
(bilinear, antialiased), then the centre cut out. Training images then get the standard augmentation
(He et al. 2016, Section 4.2, scaled: a random crop after padding by size/8, a horizontal flip with
probability 1/2); every image is normalized per channel (ImageNet's mean and std unless given).

Determinism: ``EpochSampler`` runs where the loader is iterated (rank 0 under dist), never in a worker.
The e-th pass over it yields the permutation drawn from (seed, e), each index paired with its sample's
augmentation seed, drawn from (seed, e, index). A worker only applies them, so the batches are the same
with any number of workers, and a resumed run reads the same batches again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, default_collate
from torch.utils.data import Dataset as TorchDataset

from torchdecoupled.data.augment import random_crop_flip
from torchdecoupled.data.batches import stream_seed
from torchdecoupled.data.dataset import data_root

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VAL_SPLITS = ("val", "test")
_SHUFFLE, _SAMPLE = 1, 3  # the shuffle stream as Batches'; per-sample augmentation seeds


def decode(path: str, size: int) -> Tensor:
    """The image at ``path`` as uint8 (3, H, W), RGB. A JPEG is decoded at the smallest scale whose sides
    are still >= ``size`` (Pillow's draft mode: much faster for large photos)."""
    from PIL import Image, UnidentifiedImageError  # lazy: only streamed datasets need Pillow

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode this image ({e}); remove or replace the file") from None
    w, h = rgb.size
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)


def resize_center(x: Tensor, size: int) -> Tensor:
    """uint8 (C, H, W) -> float (C, size, size) in [0, 1]: shorter side to ``size``, then the centre."""
    _, h, w = x.shape
    nh, nw = max(size, round(h * size / min(h, w))), max(size, round(w * size / min(h, w)))
    out = x.float().div_(255.0)
    if (nh, nw) != (h, w):
        out = F.interpolate(out[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[:, top : top + size, left : left + size]


def scan(split_dir: str, classes: Optional[Sequence[str]] = None) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(path, label)]) of one split, files sorted; ``classes`` (the train split's) fixes the labels."""
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"no class folders in {split_dir}: expected {split_dir}/<class>/<image>.png "
                                f"(one folder per class)")
    classes = list(found if classes is None else classes)
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise ValueError(f"{os.path.join(split_dir, unknown[0])}: class {unknown[0]!r} is not among the training "
                         f"classes ({', '.join(classes)}); every class needs a folder under train/")
    samples = []
    for c in found:
        files = [os.path.join(d, f) for d, _, fs in sorted(os.walk(os.path.join(split_dir, c), followlinks=True))
                 for f in sorted(fs) if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
        if not files:
            raise FileNotFoundError(f"no images in {os.path.join(split_dir, c)} (looked for "
                                    f"{', '.join(IMAGE_SUFFIXES)}): add some or remove the folder")
        samples += [(f, classes.index(c)) for f in files]
    return classes, samples


class ImageFolder(TorchDataset):
    """One split. ``dataset[i]`` is image i unaugmented; ``dataset[(i, seed)]`` is image i augmented by a
    generator seeded with ``seed`` (what ``EpochSampler`` yields)."""

    def __init__(self, samples: list[tuple[str, int]], size: int, mean: Sequence[float], std: Sequence[float]):
        self.samples, self.size = samples, int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key) -> tuple[Tensor, int]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[i]
        x = resize_center(decode(path, self.size), self.size)
        if seed is not None:
            x = random_crop_flip(x[None], torch.Generator().manual_seed(seed), padding=self.size // 8)[0]
        return (x - self.mean) / self.std, label


class EpochSampler(Sampler):
    """Pass e over the sampler: a permutation from (seed, e), each index with its augmentation seed."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, int(seed), 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        e, self.epoch = self.epoch, self.epoch + 1
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(stream_seed(self.seed, _SHUFFLE, e)))
        for i in perm.tolist():
            yield i, stream_seed(self.seed, _SAMPLE, e * self.n + i)


class Collate:
    """Stack a batch and cast the inputs to the run's dtype (picklable, for workers)."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype

    def __call__(self, items):
        x, y = default_collate(items)
        return x.to(self.dtype), y


@dataclass
class FolderData:
    """An image folder's two splits and how to read them: ``train_loader`` and ``validation`` DataLoaders."""

    name: str
    train: ImageFolder
    test: ImageFolder
    classes: list[str]
    workers: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (3, self.train.size, self.train.size)

    def train_loader(self, batch_size: int, seed: int, dtype: torch.dtype = torch.float32) -> DataLoader:
        """Shuffled, augmented batches, deterministic in ``seed`` (see the module docstring)."""
        if not 0 < batch_size <= len(self.train):
            raise ValueError(f"batch_size must be in [1, {len(self.train)}] (the training images), got {batch_size}")
        return DataLoader(self.train, batch_size=batch_size, sampler=EpochSampler(len(self.train), seed),
                          num_workers=self.workers, collate_fn=Collate(dtype),
                          generator=torch.Generator().manual_seed(seed))  # not the global RNG

    def validation(self, dtype: torch.dtype = torch.float32, batch_size: int = 256) -> DataLoader:
        """The evaluation images in order, unaugmented."""
        return DataLoader(self.test, batch_size=batch_size, num_workers=self.workers, collate_fn=Collate(dtype))

    def sample(self, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """The first ``n`` training images, unaugmented, read here (for partitioning by time or FLOPs)."""
        return Collate(dtype)([self.train[i] for i in range(min(n, len(self.train)))])[0]

    def __repr__(self) -> str:
        return (f"FolderData({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
                f"in_shape={self.in_shape}, num_classes={self.num_classes}, workers={self.workers})")


def load_folder(root: str | None = None, size: int = 32, workers: Optional[int] = None,
                mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> FolderData:
    """The image folder at ``root`` (see the module docstring); ``workers``: DataLoader worker processes
    (default: up to 4, one per CPU)."""
    root = data_root(root)
    if size < 8:
        raise ValueError(f"image size must be >= 8 pixels, got {size}")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std need 3 values (RGB) and std > 0, got mean={mean}, std={std}")
    train_dir = os.path.join(root, "train")
    val_dirs = [os.path.join(root, s) for s in VAL_SPLITS if os.path.isdir(os.path.join(root, s))]
    if not os.path.isdir(train_dir) or not val_dirs:
        raise FileNotFoundError(f"image folder not found under {root!r}: expected {train_dir}/<class>/<image> and "
                                f"{os.path.join(root, 'val')}/<class>/<image> (or test/), one folder per class; "
                                f"pass --data-root DIR")
    classes, train = scan(train_dir)
    _, test = scan(val_dirs[0], classes)
    workers = min(4, os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: read in the training process), got {workers}")
    return FolderData("folder", ImageFolder(train, size, mean, std), ImageFolder(test, size, mean, std),
                      classes, workers)
