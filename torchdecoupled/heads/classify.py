"""Cross-entropy auxiliary heads: a linear probe and DGL's MLP-SR-aux.

DGL: Belilovsky, Eickenberg, Oyallon, "Decoupled Greedy Learning of CNNs", ICML 2020. Its auxiliary
network "MLP-SR-aux" (reference code ``auxillary_classifier2``) is, on features
(C, H, W):

    adaptive avg-pool to (ceil(H/4), ceil(W/4))
    3 x [1x1 conv C->C (no bias), BN, ReLU]
    adaptive avg-pool to 2x2, flatten            -> 4C
    3 x [Linear 4C->4C, BN, ReLU]
    Linear 4C -> classes, cross-entropy

On 1D features (C, L) the same with Conv1d/BatchNorm1d, pools to ceil(L/4) then 2 (so 2C wide MLP);
on flat features (F,) only the MLP part, F wide.
"""
from __future__ import annotations

import torch
from torch import nn

from torchdecoupled.heads.base import AuxHead, check_features, conv_bn, global_pool, pool, quarter


class ClassifierHead(AuxHead):
    """Cross-entropy on logits(h); logits(h) is public, for the auxiliary accuracy."""

    name = "classifier"

    def __init__(self, feature_shape: tuple[int, ...]):
        super().__init__()
        self.feature_shape = tuple(feature_shape)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, h: torch.Tensor, y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        check_features(h, self.feature_shape, self.name)
        return nn.functional.cross_entropy(self.logits(h), y)


class LinearHead(ClassifierHead):
    """Global average pool (if h has spatial dims) + Linear -> cross-entropy."""

    name = "linear"

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int):
        super().__init__(feature_shape)
        self.fc = nn.Linear(feature_shape[0], num_classes)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(global_pool(h))


def _mlp(width: int, num_classes: int, depth: int = 3) -> nn.Sequential:
    """depth x [Linear width->width, BN1d, ReLU] + Linear width->classes (DGL's MLP part)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU()]
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class DGLHead(ClassifierHead):
    """DGL's MLP-SR-aux (see the module docstring for the layer list)."""

    name = "dgl"

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int, depth: int = 3):
        super().__init__(feature_shape)
        channels, spatial = feature_shape[0], tuple(feature_shape[1:])
        self.first_pool = quarter(spatial)  # () for flat features: no conv part
        self.second_pool = (2,) * len(spatial)
        convs: list[nn.Module] = []
        for _ in range(depth if spatial else 0):
            convs += conv_bn(len(spatial), channels, channels, kernel=1) + [nn.ReLU()]
        self.convs = nn.Sequential(*convs)
        self.mlp = _mlp(channels * 2 ** len(spatial), num_classes, depth)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        out = h
        if self.first_pool:
            out = pool(self.convs(pool(h, self.first_pool)), self.second_pool).flatten(1)
        return self.mlp(out)
