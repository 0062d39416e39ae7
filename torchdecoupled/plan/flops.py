"""Costs derived from FLOPs, for devices we do not have: every layer's time = its FLOPs / a stated throughput.

FLOPs per layer come from ``compensate.layer_flops`` (``torch.utils.flop_counter``: matmuls and convolutions;
elementwise work such as BatchNorm and ReLU counts zero, so a stated throughput is an *effective* one that
has to absorb it), counted on a small batch and scaled linearly to ``batch``; the update is costed as
memory traffic, ``UPDATE_PASSES`` passes over the layer's parameters at ``memory_bw``. Stored bytes are
measured on the small batch on this machine and scaled the same way.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..compensate import layer_flops
from .costs import Costs, _bytes

UPDATE_PASSES = 5  # SGD with momentum and weight decay: read w, g, v; write w, v


def flop_costs(model: nn.Sequential, sample: torch.Tensor, target: torch.Tensor | None, batch: int,
               flops_per_s: float, memory_bw: float = 1e12, model_name: str = "") -> Costs:
    """Costs of ``model`` at ``batch`` on a device computing ``flops_per_s`` (effective) with ``memory_bw``
    bytes/s of memory bandwidth; ``sample`` (and ``target``) is a small batch to count on."""
    if not flops_per_s > 0 or not memory_bw > 0:
        raise ValueError(f"flops_per_s and memory_bw must be > 0 (got {flops_per_s}, {memory_bw})")
    layers = list(model)
    small = int(sample.shape[0])
    r = batch / small
    flops = layer_flops(layers, sample)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        saved_state = [[b.detach().clone() for b in m.buffers()] for m in layers]
        rows, loss = _bytes(layers, sample, target)
        with torch.no_grad():
            for m, old in zip(layers, saved_state):
                for buf, value in zip(m.buffers(), old):
                    buf.copy_(value)
    from .costs import LayerCost
    names = list(model._modules)
    out = []
    for name, m, (f, b), row in zip(names, layers, flops, rows):
        row = {**row, "out_bytes": round(row["out_bytes"] * r), "saved_bytes": round(row["saved_bytes"] * r)}
        out.append(LayerCost(name, type(m).__name__, f * r / flops_per_s, b * r / flops_per_s,
                             UPDATE_PASSES * row["trainable_bytes"] / memory_bw, **row))
    note = (f"derived from FLOPs at {flops_per_s / 1e12:g} TFLOP/s effective, updates at {memory_bw / 1e9:g} GB/s; "
            f"counted on batch {small}, scaled to {batch}")
    return Costs(out, batch, round(sample.nbytes * r), round(loss * r), "flops", model_name, note)


def scaled(costs: Costs, factor: float, note: str) -> Costs:
    """Every time divided by ``factor`` (a device ``factor`` times as fast as the one measured)."""
    layers = [replace(c, forward_s=c.forward_s / factor, backward_s=c.backward_s / factor,
                      update_s=c.update_s / factor) for c in costs.layers]
    return replace(costs, layers=layers, note=f"{costs.note}; {note}")
