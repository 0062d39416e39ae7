"""Each layer's measured cost for ``balance="time"``: forward and backward wall-clock time on a batch."""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn


def layer_costs(layers: Sequence[nn.Module], sample: torch.Tensor,
                repeats: int = 3) -> list[tuple[float, float]]:
    """Median (forward, backward) seconds of each layer, timed as training runs them.

    ``repeats + 1`` passes (the first warms up), each like a training step: a forward through all
    layers in order, keeping every layer's graph, then the backward layer by layer in reverse order
    (``torch.autograd.grad``: input and parameter gradients; layer 0's input needs none), each layer
    receiving the gradient the next one passed down. So every layer is timed with the caches and memory
    in the state a training step leaves them. (Timing each layer's backward right after its own forward,
    with its saved tensors still in cache, made the small late layers of a CNN look cheaper than they
    are: on ResNet-20/56, K = 2, the first stage measured ~10% heavier than it ran; docs/speed.md.)
    Peak memory is one training step's. Side-effect free: ``.grad`` is untouched, buffers (BatchNorm
    statistics) and the CPU random state are restored afterwards.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1 (got {repeats!r})")
    layers = list(layers)
    fwd: list[list[float]] = [[] for _ in layers]
    bwd: list[list[float]] = [[] for _ in layers]
    saved = [[b.detach().clone() for b in layer.buffers()] for layer in layers]
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            for r in range(repeats + 1):  # r == 0 is the warm-up
                inputs, outputs = _forward_all(layers, sample, fwd if r else None)
                _backward_all(layers, inputs, outputs, bwd if r else None)
    finally:
        with torch.no_grad():
            for layer, old in zip(layers, saved):
                for buf, value in zip(layer.buffers(), old):
                    buf.copy_(value)
    return [(statistics.median(f), statistics.median(b)) for f, b in zip(fwd, bwd)]


def _forward_all(layers, sample, times):
    """One forward through every layer, each on a detached copy of the previous output (a leaf that
    requires grad, except the network's input); returns the inputs and outputs, appends the times."""
    inputs, outputs, x = [], [], sample
    for index, layer in enumerate(layers):
        inp = x.detach()
        if index and (inp.is_floating_point() or inp.is_complex()):
            inp.requires_grad_(True)
        t0 = time.perf_counter()
        y = layer(inp)
        t1 = time.perf_counter()
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"layer {index} ({type(layer).__name__}) returned a "
                            f"{type(y).__name__}; balance='time' needs layers that map a tensor "
                            f"to a tensor (use balance='params' or explicit boundaries)")
        if times is not None:
            times[index].append(t1 - t0)
        inputs.append(inp)
        outputs.append(y)
        x = y
    return inputs, outputs


def _backward_all(layers, inputs, outputs, times) -> None:
    """Backward layer by layer from the last, passing each input gradient down; frees as it goes."""
    grad = None
    for index in reversed(range(len(layers))):
        inp, y = inputs[index], outputs[index]
        inputs[index] = outputs[index] = None
        wrt = ([inp] if inp.requires_grad else []) + [p for p in layers[index].parameters() if p.requires_grad]
        if grad is None or grad.shape != y.shape or grad.dtype != y.dtype:
            grad = torch.ones_like(y) if y.is_floating_point() or y.is_complex() else None
        t0 = time.perf_counter()
        got = None
        if y.requires_grad and wrt:
            got = torch.autograd.grad(y, wrt, grad, allow_unused=True)
        t1 = time.perf_counter()
        if times is not None:
            times[index].append(t1 - t0)
        grad = got[0] if got is not None and inp.requires_grad else None
