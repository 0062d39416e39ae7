"""FLOPs of one training step of an auxiliary head or a stage, per sample, counted by PyTorch.

``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of the matrix products and convolutions
(forward and backward; 2 FLOPs per multiply-add) that run inside it, and nothing else: normalisation,
activations, pooling and the loss's own arithmetic count 0. So these numbers compare the expensive
parts of heads and stages; they are not a full operation count.

    head_flops(head, h, y, x0)     one forward of head.loss(h, y, x0) and its backward, which computes
                                   the head's parameter gradients and dL/dh (what the stage needs)
    module_flops(module, x)        one forward of module(x) and the backward of its output's sum
                                   (the parameter gradients, and dL/dx when x is floating)

Both count on a deep copy (BatchNorm statistics and gradients of the original do not move) and divide
by the batch size of h / x.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs that ``fn()`` runs (matrix products and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def head_flops(head: nn.Module, h: torch.Tensor, y: torch.Tensor, x0: torch.Tensor | None) -> float:
    """Per-sample FLOPs of one forward + backward of ``head.loss(h, y, x0)`` (gradients to the head and h)."""
    head = copy.deepcopy(head).train()
    h = h.detach().clone().requires_grad_(True)
    return count_flops(lambda: head.loss(h, y, x0).backward()) / len(h)


def module_flops(module: nn.Module, x: torch.Tensor) -> float:
    """Per-sample FLOPs of one forward + backward of ``module(x)`` (parameter gradients; dL/dx if x floats)."""
    module = copy.deepcopy(module).train()
    x = x.detach().clone()
    if x.is_floating_point():
        x.requires_grad_(True)

    def step() -> None:
        out = module(x)
        if out.requires_grad:
            out.sum().backward()

    return count_flops(step) / len(x)
