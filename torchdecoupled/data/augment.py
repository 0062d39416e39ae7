"""Vectorized train-time augmentation on batches of images, driven by an explicit torch.Generator.

The standard CIFAR recipe (He et al. 2016, Section 4.2): pad 4 pixels on each side, take a random
32x32 crop, flip horizontally with probability 1/2. One gather does crop and flip for the whole batch.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def random_crop_flip(
    x: Tensor, generator: torch.Generator, padding: int = 4, fill: Optional[Sequence[float]] = None
) -> Tensor:
    """Random crop of the original size from `x` (N, C, H, W) padded by `padding`, then random h-flip.

    `fill` is the per-channel value of the padding (default 0); for normalized images pass the
    normalized value of black, (0 - mean) / std, to match padding the raw image with zeros.
    The input is not modified; the result has the shape of `x`.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip needs images (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    padded = x.new_zeros((n, c, h + 2 * padding, w + 2 * padding))
    if fill is not None:
        padded += torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    flip = torch.rand((n, 1), generator=generator) < 0.5
    rows = top + torch.arange(h)  # (n, h)
    cols = left + torch.arange(w)  # (n, w)
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(n).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


class CropFlip:
    """A picklable `augment` callable: `random_crop_flip` with fixed padding and fill."""

    def __init__(self, padding: int = 4, fill: Optional[Sequence[float]] = None):
        self.padding = padding
        self.fill = None if fill is None else tuple(float(v) for v in fill)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return random_crop_flip(x, generator, self.padding, self.fill)

    def __repr__(self) -> str:
        return f"CropFlip(padding={self.padding}, fill={self.fill})"
