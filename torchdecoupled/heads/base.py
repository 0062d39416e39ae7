"""The auxiliary-head interface and the shape helpers every built-in head shares."""
from __future__ import annotations

import math

import torch
from torch import nn


class AuxHead(nn.Module):
    """Base: loss(h, y, x0) -> scalar tensor.

    h: the stage output, shape (B, *feature_shape); y: labels (int64, shape (B,));
    x0: the network input of the same batch, shape (B, *input_shape).
    A head owns its parameters; the stage that holds it trains them with its own optimizer.
    ``head(h, y, x0)`` is the same as ``head.loss(h, y, x0)``.
    """

    def loss(self, h: torch.Tensor, y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement loss(h, y, x0)")

    def forward(self, h: torch.Tensor, y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.loss(h, y, x0)


def check_features(h: torch.Tensor, feature_shape: tuple[int, ...], head: str) -> None:
    """Fail at the boundary when a head gets features of another shape than it was built for."""
    if tuple(h.shape[1:]) != tuple(feature_shape):
        raise ValueError(
            f"{head} head was built for feature_shape {tuple(feature_shape)} but got h of shape "
            f"{tuple(h.shape)} (expected (batch, *feature_shape)); build the head with "
            f"feature_shape=h.shape[1:]"
        )


def check_shape(shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """(F,), (C, L) or (C, H, W) with positive sizes; anything else is refused with the fix."""
    shape = tuple(int(s) for s in shape)
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise ValueError(
            f"{what} must be (F,), (C, L) or (C, H, W) with positive sizes and no batch dim "
            f"(got {shape}); pass tensor.shape[1:]"
        )
    return shape


def pool(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Adaptive average pool over the spatial dims of a (B, C, L) or (B, C, H, W) tensor."""
    if x.dim() == 3:
        return nn.functional.adaptive_avg_pool1d(x, size)
    return nn.functional.adaptive_avg_pool2d(x, size)


def global_pool(h: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C) by averaging; (B, F) is returned as is."""
    return h.flatten(2).mean(2) if h.dim() > 2 else h


def quarter(spatial: tuple[int, ...]) -> tuple[int, ...]:
    """ceil(s / 4) for each spatial size: DGL's first pooling target."""
    return tuple(math.ceil(s / 4) for s in spatial)


def conv_bn(spatial_rank: int, c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    """[conv (no bias), BN] for 1D (spatial_rank 1) or 2D (spatial_rank 2) features."""
    conv = nn.Conv1d if spatial_rank == 1 else nn.Conv2d
    bn = nn.BatchNorm1d if spatial_rank == 1 else nn.BatchNorm2d
    return [conv(c_in, c_out, kernel, padding=kernel // 2, bias=False), bn(c_out)]
