"""Batch compensation for recomputation (DTRP): our interpretation, since the paper's scheme is not public.

Peng et al. (PLOS ONE 2023) add "a batch compensation scheme ... allowing DTRP to run faster" without
publishing it. What it must fix (spec, DTRP): under recomputation a stage k < K-1 does, per tick, its
forward F, the recompute F and the backward B, while the last stage does F + B only. With a partition
balanced for F + B, stages 0..K-2 are therefore slower per tick than the last one and set the pipeline's
pace. Ours removes that imbalance by choosing the cut points: the exact min-max partition
(``partition.balance_costs``, recompute=True) of the per-stage per-tick cost

    stage k < K-1:  sum over its layers of 2 F + B          last stage:  sum of F + B

with F and B counted in floating-point operations (``torch.utils.flop_counter``) rather than measured
time, so the partition is the same on every run and in every process of a distributed run. (For a
measured-time version use ``partition="time"``, which applies the same cost model to timings.) The
effect, per-stage per-tick time before and after, is measured by ``benchmarks/compensation.py``
(docs/compensation.md).

    tick      stage0        stage1        stage2 (last)
    cost      2F0+B0        2F1+B1        F2+B2          <- balanced by moving layers to the last stage
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .partition import balance_costs


def layer_flops(layers: Sequence[nn.Module], sample: torch.Tensor) -> list[tuple[float, float]]:
    """(forward, backward) FLOPs of each layer, run in sequence on ``sample``.

    Layers run in eval mode (no BatchNorm statistics move, no dropout random numbers are drawn) and their
    train/eval flags are restored. The backward counts parameter gradients and, for every layer but the
    first, the input gradient. Matmuls and convolutions only: elementwise work (BN, ReLU) counts zero.
    """
    out, x = [], sample.detach()
    modes = [m.training for m in layers]
    try:
        for i, layer in enumerate(layers):
            layer.eval()
            x = x.detach().requires_grad_(i > 0 and x.is_floating_point())
            with FlopCounterMode(display=False) as fwd:
                y = layer(x)
            wrt = ([x] if x.requires_grad else []) + [p for p in layer.parameters() if p.requires_grad]
            with FlopCounterMode(display=False) as bwd:
                if y.requires_grad and wrt:
                    torch.autograd.grad(y, wrt, torch.ones_like(y), allow_unused=True)
            out.append((float(fwd.get_total_flops()), float(bwd.get_total_flops())))
            x = y
    finally:
        for m, was in zip(layers, modes):
            m.train(was)
    return out


def flop_boundaries(model: nn.Sequential, num_stages: int, sample: torch.Tensor,
                    recompute: bool = True) -> list[int]:
    """The K-1 cut points that minimise the largest per-stage per-tick FLOPs (recompute counted)."""
    return balance_costs(layer_flops(list(model), sample), num_stages, recompute=recompute)
