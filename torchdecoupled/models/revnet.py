"""Reversible networks (RevNets) for PETRA, as flat sequences of blocks.

Gomez, Ren, Urtasun, Grosse, "The Reversible Residual Network", NeurIPS 2017 (arXiv:1707.04585), in the
layout of PETRA's reference RevNet-18 (Rivaud et al., ICLR 2025; github.com/stephane-rivaud/PETRA,
``make_layers_revnet18``): a non-reversible stem that widens the input to two streams, groups of
reversible blocks (``torchdecoupled.reversible.Coupling``), a non-reversible downsampling block at the
start of every group but the first, and a non-reversible head. The activation between blocks holds the
two streams concatenated along the channels: ``2 * width`` channels where a stream has ``width``.

- reversible block: y1 = x1 + F(x2), y2 = x2 + G(y1); F and G are conv3-BN-ReLU-conv3-BN on one
  stream (the reference's residual function ends with one more ReLU: on MNIST-1D, 3 epochs of BP, an
  earlier version of revnet1d reached 34% test accuracy with it and 72% without it). The reference's
  blocks are half couplings, (y, y~) = (x~ + F(x), x), one residual function each: ours hold two;
- downsampling block (not reversible: it halves the resolution): a basic residual block on both streams,
  conv3 (stride 2)-BN-ReLU-conv3-BN plus a 1x1 projection shortcut with BatchNorm, then ReLU;
- head: global average pooling, then a linear classifier.

Models (children of the nn.Sequential, each one partitionable unit):

- ``revnet18``: CIFAR (3x32x32), streams of 64/128/256/512 channels, blocks (2, 2, 2, 2): stem, 2 rev,
  [down, rev] x 3, head = 10 children, 5 of them reversible (the reference's K = 10 cut); 32.0M
  parameters (two residual functions per block, and downsampling convolutions over both streams);
- ``revnet_mini``: small images (digits 1x8x8, MNIST 1x28x28), streams of 16/32, blocks (4, 4): stem,
  4 rev, down, 3 rev, head = 10 children, 7 reversible; 0.21M parameters;
- ``revnet1d``: MNIST-1D (length 40), 1D convolutions, streams of 16/32, blocks (4, 4) (lengths 40,
  then 20): 10 children, 7 reversible; 72k parameters.

``DATASET_REVNETS`` names each dataset's reversible model (``--method petra`` picks it when no
``--model`` is given). Weights: Kaiming-normal convolutions and linear layers, BatchNorm weight 1, bias 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchdecoupled.models.cnn import AsChannels1d
from torchdecoupled.reversible import Coupling

DATASET_REVNETS = {"mnist1d": "revnet1d", "digits": "revnet_mini", "mnist": "revnet_mini",
                   "fashion_mnist": "revnet_mini", "cifar10": "revnet18", "cifar100": "revnet18",
                   "synthetic": "revnet18", "folder": "revnet18"}
REVNETS = ("revnet", "revnet18", "revnet_mini", "revnet1d")   # the zoo's models with reversible blocks


def _layers(dims: int):
    return (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)


def residual(channels: int, dims: int = 2) -> nn.Sequential:
    """F or G of a coupling: conv3-BN-ReLU-conv3-BN on one stream (shape-preserving)."""
    conv, bn = _layers(dims)
    return nn.Sequential(conv(channels, channels, 3, padding=1, bias=False), bn(channels), nn.ReLU(),
                         conv(channels, channels, 3, padding=1, bias=False), bn(channels))


def rev_block(width: int, dims: int = 2) -> Coupling:
    """A reversible block on two streams of ``width`` channels (``2 * width`` in all)."""
    return Coupling(residual(width, dims), residual(width, dims), dim=1)


class DownBlock(nn.Module):
    """Not reversible: halves the resolution and widens ``c_in`` to ``c_out`` channels (both streams)."""

    def __init__(self, c_in: int, c_out: int, dims: int = 2):
        super().__init__()
        conv, bn = _layers(dims)
        self.conv1, self.bn1 = conv(c_in, c_out, 3, stride=2, padding=1, bias=False), bn(c_out)
        self.conv2, self.bn2 = conv(c_out, c_out, 3, padding=1, bias=False), bn(c_out)
        self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride=2, bias=False), bn(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out)


class PoolHead(nn.Module):
    """Global average pooling over every dimension after the channels, then a linear classifier."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(2).mean(-1))


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


def _groups(width: int, blocks: tuple[int, ...], dims: int) -> list[nn.Module]:
    """Group i: streams of width * 2^i; every group but the first starts with a DownBlock."""
    if not blocks or any(int(n) < 1 for n in blocks):
        raise ValueError(f"revnet blocks must be a non-empty list of counts >= 1 per group, got {tuple(blocks)}")
    if int(width) < 1:
        raise ValueError(f"revnet width must be >= 1 channel per stream, got {width}")
    out: list[nn.Module] = []
    for i, n in enumerate(blocks):
        w = width * 2 ** i
        if i > 0:
            out.append(DownBlock(w, 2 * w, dims))  # two streams of w / 2 -> two of w
        out.extend(rev_block(w, dims) for _ in range(n - (1 if i > 0 else 0)))
    return out


def revnet(num_classes: int, in_shape: tuple[int, ...], width: int = 64,
           blocks: tuple[int, ...] = (2, 2, 2, 2)) -> nn.Sequential:
    """A 2D RevNet for (C, H, W) images: stem conv3-BN-ReLU to two streams of ``width``, the groups of
    ``blocks``, pooling head. ``revnet18`` is width 64, blocks (2, 2, 2, 2)."""
    if len(in_shape) != 3:
        raise ValueError(f"revnet needs in_shape (C, H, W), got {tuple(in_shape)}; use revnet1d for signals")
    if min(in_shape[1:]) < 2 ** (len(blocks) - 1):
        raise ValueError(f"revnet with {len(blocks)} groups halves the resolution {len(blocks) - 1} times: images of "
                         f"{in_shape[1]}x{in_shape[2]} are too small (use fewer groups, e.g. blocks=(4, 4))")
    stem = nn.Sequential(nn.Conv2d(in_shape[0], 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width),
                         nn.ReLU())
    body = _groups(width, tuple(blocks), 2)
    model = nn.Sequential(stem, *body, PoolHead(2 * width * 2 ** (len(blocks) - 1), num_classes))
    model.apply(_init)
    return model


def revnet1d(num_classes: int, in_shape: tuple[int, ...], width: int = 16,
             blocks: tuple[int, ...] = (4, 4)) -> nn.Sequential:
    """A 1D RevNet for (L,) or (C, L) signals: stem conv3-BN-ReLU to two streams of ``width``, the groups
    of ``blocks`` (each later group halves the length), pooling head."""
    if len(in_shape) not in (1, 2):
        raise ValueError(f"revnet1d needs in_shape (L,) or (C, L), got {tuple(in_shape)}; use revnet for images")
    channels, length = (1, in_shape[0]) if len(in_shape) == 1 else in_shape
    if length < 2 ** (len(blocks) - 1):
        raise ValueError(f"revnet1d with {len(blocks)} groups halves the length {len(blocks) - 1} times: signals of "
                         f"length {length} are too short (use fewer groups)")
    stem = nn.Sequential(AsChannels1d(), nn.Conv1d(channels, 2 * width, 3, padding=1, bias=False),
                         nn.BatchNorm1d(2 * width), nn.ReLU())
    body = _groups(width, tuple(blocks), 1)
    model = nn.Sequential(stem, *body, PoolHead(2 * width * 2 ** (len(blocks) - 1), num_classes))
    model.apply(_init)
    return model
