"""Multi-layer perceptron as a flat sequence of blocks.

Each hidden layer (Linear + ReLU) is one block, so a pipeline can cut between any two layers; the
first block flattens its input, so the model works on any input shape. This is the baseline MLP of
the MNIST-1D benchmark (Greydanus, "Scaling down deep learning", 2020).
"""

from __future__ import annotations

import math

from torch import nn


def mlp(num_classes: int, in_shape: tuple[int, ...], hidden: tuple[int, ...] = (256, 256)) -> nn.Sequential:
    """Flatten -> [Linear(h) -> ReLU] per entry of `hidden` -> Linear(num_classes).

    Blocks: one per hidden layer (the first also flattens), then the linear classifier. With
    `hidden=()` the model is a single flattening linear classifier.
    """
    hidden = tuple(int(h) for h in hidden)
    if any(h <= 0 for h in hidden):
        raise ValueError(f"mlp hidden sizes must be positive, got hidden={hidden}")
    width = math.prod(in_shape)
    blocks: list[nn.Module] = []
    for i, h in enumerate(hidden):
        layers = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        blocks.append(nn.Sequential(*layers))
        width = h
    head = [nn.Linear(width, num_classes)]
    if not hidden:
        head.insert(0, nn.Flatten())
    blocks.append(nn.Sequential(*head))
    return nn.Sequential(*blocks)
