"""Wide Residual Networks WRN-d-k as flat sequences of blocks.

Zagoruyko, Komodakis, "Wide Residual Networks", BMVC 2016: a 3x3 stem with 16 filters, three groups
of n = (d - 4) / 6 pre-activation basic blocks with 16k/32k/64k filters (strides 1, 2, 2), dropout
between the two convolutions of a block, then BN-ReLU, global average pooling and a linear
classifier. Blocks and initialization follow github.com/xternalz/WideResNet-pytorch (the PyTorch port
the FDG/DDG code bases use): Kaiming-normal (fan_out) convolutions, BN weight 1 / bias 0, zero Linear
bias. WRN-28-10 has 36.5M parameters.

Children of the returned nn.Sequential: stem conv3x3, WideBlock x 3n, head (BN-ReLU-avgpool-linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus the shortcut.

    When the shape changes, the shortcut is a 1x1 convolution of the pre-activated input, as in the
    reference code. Never modifies its input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut = (
            nn.Identity() if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x), inplace=True)
        out = F.relu(self.bn2(self.conv1(act)), inplace=True)
        out = self.conv2(self.dropout(out))
        return out + (x if self.equal_in_out else self.shortcut(act))


class WideHead(nn.Module):
    """BN-ReLU, global average pooling, flatten, linear classifier."""

    def __init__(self, in_planes: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(x), inplace=True)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)


def wrn(
    num_classes: int, in_shape: tuple[int, ...], depth: int = 28, width: int = 10, dropout: float = 0.0
) -> nn.Sequential:
    """WRN-`depth`-`width` (depth = 6n + 4) for (C, H, W) inputs, with dropout probability `dropout`."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (e.g. 16, 22, 28, 40), got {depth}")
    if width < 1:
        raise ValueError(f"WRN width must be a positive integer, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"WRN dropout must be in [0, 1), got {dropout}")
    if len(in_shape) != 3:
        raise ValueError(f"wrn needs in_shape (C, H, W), got {tuple(in_shape)}")
    n = (depth - 4) // 6
    blocks: list[nn.Module] = [nn.Conv2d(in_shape[0], 16, 3, padding=1, bias=False)]
    in_planes = 16
    for planes, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
        for i in range(n):
            blocks.append(WideBlock(in_planes, planes, stride if i == 0 else 1, dropout))
            in_planes = planes
    blocks.append(WideHead(in_planes, num_classes))
    model = nn.Sequential(*blocks)
    model.apply(_init_weights)
    return model
