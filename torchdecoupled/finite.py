"""Non-finite values: a diverging run stops at the stage where a nan or an inf first appears, and the run's
JSON files hold ``null`` where a number is not finite.

A Stage checks, once per action, what it makes: at F the loss it computes (the last stage's, a local head's),
the activation it sends up and its buffers (BatchNorm's running statistics move at F), at B the gradient it
sends down, at U its parameters after ``optimizer.step()``. Each check takes every large tensor's sum and one
sum over the small ones concatenated (a nan or an inf propagates; integer tensors are skipped, they are always
finite) and one ``isfinite(...).all()`` over them: one host sync per action; only
where a sum is not finite (also when finite elements overflow it) do the smallest and largest elements
(``torch.aminmax``) decide. The first failure
raises :class:`NonFiniteError` naming the stage, the action, the batch, the tick and the tensor; the run stops
there, so no epoch record and no checkpoint is written from a poisoned state (the last checkpoint is the last
finite one). What a stage receives is not checked again: its sender did.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

FIX = "lower the learning rate, or look for data or a criterion that overflows"


class NonFiniteError(ValueError):
    """A loss, an activation or gradient a stage sends, a buffer or a parameter is nan or inf; the message
    names the stage, the action, the batch, the tick and the tensor (the CLI prints it as one line)."""


def all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every element of every tensor is finite (None and empty tensors skipped); one host sync.

    First each tensor's sum (3x faster than ``aminmax`` on a large float tensor): a nan or an inf element makes
    it non-finite, so finite sums prove every element finite. Only when a sum is not (a real nan or inf, or
    finite elements that overflow the sum) do the smallest and largest elements decide."""
    ts = [torch.view_as_real(t) if t.is_complex() else t for t in tensors
          if t is not None and t.numel() and (t.is_floating_point() or t.is_complex())]  # integers are finite
    if not ts or bool(torch.isfinite(torch.stack(_sums(ts))).all()):
        return True
    ends = [e for t in ts for e in torch.aminmax(t)]
    return bool(torch.isfinite(torch.stack(ends)).all())


SMALL = 1 << 16  # elements: tensors below this are summed together (one cat and one sum instead of one each)


def _sums(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    """One sum per large tensor and one over all the small ones together (biases, BatchNorm's statistics:
    on a small model the per-call cost of many small sums is most of a check); cat promotes mixed dtypes."""
    small = [t for t in ts if t.numel() < SMALL]
    big = [t.sum() for t in ts if t.numel() >= SMALL]
    if len(small) < 2 or len({t.device for t in small}) > 1:
        return big + [t.sum() for t in small]
    return big + [torch.cat([t.reshape(-1) for t in small]).sum()]


def require_finite(tensors: list, name: Callable[[int], str], lr: Callable[[], float]) -> None:
    """Raise NonFiniteError unless ``all_finite(tensors)``: ``name(i)`` of the first tensor i that is not
    (e.g. "stage 1: after the forward of batch 57 (tick 58), the loss"), nan or inf, the fix and ``lr()``;
    ``name`` and ``lr`` are called on failure only."""
    if all_finite(tensors):
        return
    i = next(i for i, t in enumerate(tensors) if t is not None and not all_finite([t]))
    kind = "nan" if bool(torch.isnan(tensors[i]).any()) else "inf"
    raise NonFiniteError(f"{name(i)} is {kind}: {FIX} (lr {lr():g})")


def json_safe(obj):
    """``obj`` with every non-finite float replaced by None, so ``json.dumps(..., allow_nan=False)`` writes
    strict JSON (``NaN`` and ``Infinity`` are not JSON): a record's ``null`` means "no finite value"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
