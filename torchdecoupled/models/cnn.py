"""Small convolutional networks for the quick benchmarks, as flat sequences of blocks.

- `cnn2d`: a three-layer 2D CNN for 8x8 images (scikit-learn's digits, 1x8x8).
- `cnn1d`: the MNIST-1D CNN of Greydanus, "Scaling down deep learning" (2020), github.com/greydanus/
  mnist1d (`ConvBase`): three strided Conv1d + ReLU layers and a linear classifier; about 94% test
  accuracy on MNIST-1D.

Every block starts with a non-in-place op, so a block never modifies its input tensor.
"""

from __future__ import annotations

import torch
from torch import nn


class AsChannels1d(nn.Module):
    """View a batch of 1D signals (N, L) as (N, 1, L); (N, C, L) passes through unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


def _conv1d_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


def cnn1d(num_classes: int, in_shape: tuple[int, ...], channels: int = 25, batchnorm: bool = False) -> nn.Sequential:
    """Greydanus's MNIST-1D CNN; `in_shape` is (L,) or (C, L), e.g. (40,) or (1, 40).

    Blocks: [view as (N, C, L), Conv1d(C, 25, 5, 2, 1), ReLU], [Conv1d(25, 25, 3, 2, 1), ReLU] x 2,
    [Flatten, Linear(25 * L', num_classes)], with L' = 5 for L = 40.

    ``batchnorm=True`` ("cnn1d_bn", our addition) puts BatchNorm1d after each convolution. The paper's
    BN-free network diverges under delayed gradients with SGD momentum 0.9 at lr >= 0.05 (measured: FDG
    K=3 falls to chance), as BN-free deep networks tend to; the FDG/ADL papers train BN ResNets.
    """
    if len(in_shape) == 1:
        in_channels, length = 1, in_shape[0]
    elif len(in_shape) == 2:
        in_channels, length = in_shape
    else:
        raise ValueError(f"cnn1d needs in_shape (L,) or (C, L), got {tuple(in_shape)}; use a 2D model for images")
    out_len = length
    for kernel in (5, 3, 3):
        out_len = _conv1d_len(out_len, kernel, 2, 1)
    if out_len < 1:
        raise ValueError(f"cnn1d input length {length} is too short for three stride-2 convolutions (need >= 6)")
    def norm() -> list[nn.Module]:
        return [nn.BatchNorm1d(channels)] if batchnorm else []

    return nn.Sequential(
        nn.Sequential(AsChannels1d(), nn.Conv1d(in_channels, channels, 5, stride=2, padding=1), *norm(),
                      nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv1d(channels, channels, 3, stride=2, padding=1), *norm(), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv1d(channels, channels, 3, stride=2, padding=1), *norm(), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Flatten(), nn.Linear(channels * out_len, num_classes)),
    )


def cnn2d(num_classes: int, in_shape: tuple[int, ...], channels: int = 16) -> nn.Sequential:
    """A small 2D CNN for tiny images such as 1x8x8 digits; `in_shape` is (C, H, W) with H, W >= 4.

    Blocks: [Conv3x3(C, c), ReLU], [Conv3x3(c, 2c), ReLU, MaxPool2], [Conv3x3(2c, 2c), ReLU, MaxPool2],
    [Flatten, Linear(2c * H/4 * W/4, num_classes)].
    """
    if len(in_shape) != 3:
        raise ValueError(f"cnn2d needs in_shape (C, H, W), got {tuple(in_shape)}; use 'mlp' or 'cnn1d' otherwise")
    c_in, height, width = in_shape
    if height < 4 or width < 4:
        raise ValueError(f"cnn2d needs images of at least 4x4 (two 2x2 poolings), got {height}x{width}")
    c = channels
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(2 * c * (height // 4) * (width // 4), num_classes)),
    )
