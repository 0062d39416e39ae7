"""A deep 1D ResNet for MNIST-1D (signals of length 40), as a flat sequence of blocks.

The CIFAR ResNet of He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
Section 4.2, with 1D convolutions: a kernel-3 stem with 16 filters, three groups of n basic blocks with
16/32/64 filters (the second and third start with stride 2), global average pooling and a linear
classifier; depth 6n + 2. Where a block changes width or length its shortcut is the projection of
Section 3.3 (option B: 1x1 conv with the stride + BatchNorm), as in the AugLocal and InfoPro reference
ResNets; elsewhere the identity. Weights: Kaiming-normal (fan_out, ReLU gain) convolutions, BatchNorm
weight 1 and bias 0, PyTorch's default Linear (as torchvision's ResNet).

Children of the returned nn.Sequential, each one partitionable unit:
    stem (view as (N, C, L), conv3-BN-ReLU), BasicBlock1d x 3n, head (global avgpool, flatten, linear).
So depth 32 (n = 5) has 17 children and can be cut into up to 17 stages; depth 20 has 11.
On MNIST-1D, (1, 40) inputs: lengths 40, 20, 10 in the three groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchdecoupled.models.cnn import AsChannels1d


class BasicBlock1d(nn.Module):
    """conv3-BN-ReLU-conv3-BN, plus the shortcut (projection where the shape changes), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(planes)
        self.conv2 = nn.Conv1d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv1d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm1d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Head1d(nn.Module):
    """Global average pooling over the length, flatten, linear classifier."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(2))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv1d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def resnet1d(num_classes: int, in_shape: tuple[int, ...], depth: int = 32, channels: int = 16) -> nn.Sequential:
    """1D ResNet of ``depth`` = 6n + 2 layers for signals of shape (L,) or (C, L), e.g. MNIST-1D's (1, 40);
    group widths channels, 2 channels, 4 channels (16/32/64)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet1d depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, ...), got {depth!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"resnet1d channels must be an integer >= 1, got {channels!r}")
    if len(in_shape) not in (1, 2):
        raise ValueError(f"resnet1d needs in_shape (L,) or (C, L), got {tuple(in_shape)}; use 'resnet' for images")
    c_in = 1 if len(in_shape) == 1 else in_shape[0]
    n = (depth - 2) // 6
    blocks: list[nn.Module] = [nn.Sequential(AsChannels1d(), nn.Conv1d(c_in, channels, 3, padding=1, bias=False),
                                             nn.BatchNorm1d(channels), nn.ReLU())]
    in_planes = channels
    for planes, stride in ((channels, 1), (2 * channels, 2), (4 * channels, 2)):
        for i in range(n):
            blocks.append(BasicBlock1d(in_planes, planes, stride if i == 0 else 1))
            in_planes = planes
    blocks.append(Head1d(in_planes, num_classes))
    model = nn.Sequential(*blocks)
    model.apply(_init_weights)
    return model
