"""Mixed precision of a stage: ``"float32"`` (off) or ``"bf16"``.

bf16 runs every forward of a stage (F, the recompute at B, evaluation) under ``torch.autocast`` with
bfloat16, on the CPU (AVX-512 bf16) or CUDA. The weights, their gradients and the optimizer state stay
in the weights' dtype (float32 master weights); what crosses a stage boundary travels in bfloat16: the
activation a stage sends up is cast inside its graph, so the gradient that comes back down, and the one
the stage sends further down, are bfloat16 as well (half the bytes of float32). The last stage's
outputs stay as autocast makes them in training (its loss runs in float32, autocast's rule for the
losses) and are cast to float32 for scoring.
"""
from __future__ import annotations

import contextlib

import torch

from .boundary import map_tensors

PRECISIONS = ("float32", "bf16")


def check_precision(precision: str, dtype: torch.dtype | None = None) -> str:
    """``precision`` if valid; bf16 needs float32 weights (its master copy)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (valid: {', '.join(PRECISIONS)})")
    if precision == "bf16" and dtype is not None and dtype != torch.float32:
        raise ValueError(f"precision 'bf16' keeps float32 master weights, but the weights are {dtype}: use "
                         f"float32 weights (--dtype float32), or precision 'float32'")
    return precision


def autocast(precision: str, device: torch.device):
    """The context of a stage's forward: bf16 autocast on the stage's device type, or nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def to_boundary(tree, precision: str):
    """What a stage sends up: floating tensors in bfloat16 under bf16 (in the graph: gradients follow)."""
    if precision != "bf16":
        return tree
    return map_tensors(lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t, tree)


def to_scores(tree, precision: str):
    """The last stage's evaluation outputs in float32 under bf16, scored like the float32 loss of training."""
    if precision != "bf16":
        return tree
    return map_tensors(lambda t: t.float() if t.is_floating_point() else t, tree)


@torch.no_grad()
def eval_forward(module: torch.nn.Module, x, precision: str, device, last: bool):
    """One forward of ``module`` in eval mode (each submodule's mode restored), as ``Stage.predict`` runs it."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        with autocast(precision, device):
            out = module.eval()(x)
    finally:
        for m, mode in modes:
            m.training = mode
    return to_scores(out, precision) if last else to_boundary(out, precision)
