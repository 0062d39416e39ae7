"""CIFAR ResNets (ResNet-20/32/44/56/110/1202) as flat sequences of blocks.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Section 4.2: a 3x3
stem with 16 filters, three stages of n basic blocks with 16/32/64 filters (depth 6n + 2), global
average pooling and a linear classifier. Shortcuts use option A: an identity that subsamples with
stride 2 and zero-pads the new channels (no parameters). Weights follow the common reference
implementation github.com/akamaster/pytorch_resnet_cifar10 (Kaiming-normal for Conv2d and Linear
weights; ResNet-20 0.27M, ResNet-56 0.85M, ResNet-110 1.7M, ResNet-1202 19.4M parameters).

Children of the returned nn.Sequential, each one partitionable unit:
    stem (conv3x3-BN-ReLU), BasicBlock x 3n, head (global avgpool, flatten, linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by `stride`, zero-pad channels from `in_planes` to `planes`."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_front = (planes - in_planes) // 2
        self.pad_back = planes - in_planes - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU. Never modifies its input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out, inplace=True)


class Head(nn.Module):
    """Global average pooling, flatten, linear classifier."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _init_weights(module: nn.Module) -> None:
    # akamaster/pytorch_resnet_cifar10 `_weights_init`: Kaiming-normal (fan_in, gain sqrt 2) weights;
    # biases and BatchNorm keep PyTorch's defaults.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


def resnet(num_classes: int, in_shape: tuple[int, ...], depth: int = 20) -> nn.Sequential:
    """CIFAR ResNet of `depth` = 6n + 2 layers (20, 32, 44, 56, 110, 1202) for (C, H, W) inputs."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, 1202), got {depth}")
    if len(in_shape) != 3:
        raise ValueError(f"resnet needs in_shape (C, H, W), got {tuple(in_shape)}")
    n = (depth - 2) // 6
    blocks: list[nn.Module] = [
        nn.Sequential(nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    ]
    in_planes = 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(n):
            blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
            in_planes = planes
    blocks.append(Head(in_planes, num_classes))
    model = nn.Sequential(*blocks)
    model.apply(_init_weights)
    return model
