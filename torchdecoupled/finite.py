"""Non-finite values: a diverging run stops at the stage where a nan or an inf first appears, and the run's
JSON files hold ``null`` where a number is not finite.

A Stage checks, once per action, what it makes: at F the loss it computes (the last stage's, a local head's),
the activation it sends up and its buffers (BatchNorm's running statistics move at F), at B the gradient it
sends down, at U its parameters after ``optimizer.step()``. Small tensors (biases, BatchNorm's statistics, the
loss: below ``SMALL`` elements) are scanned element by element in one call per device and dtype,
``torch._amp_foreach_non_finite_check_and_unscale_`` with a scale of 1 (the kernel behind ``GradScaler``: it
writes every value back unchanged and bumps no version counter); each large tensor is summed (a nan or an
inf propagates; 3x faster than ``aminmax``), and only where a sum is not finite (also when finite elements
overflow it) do its smallest and largest elements (``torch.aminmax``) decide. Integer tensors are skipped
(always finite). One host sync per action. The first failure
raises :class:`NonFiniteError` naming the stage, the action, the batch, the tick and the tensor; the run stops
there, so no epoch record and no checkpoint is written from a poisoned state (the last checkpoint is the last
finite one). What a stage receives is not checked again: its sender did.
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Iterable

import torch

FIX = "lower the learning rate, or look for data or a criterion that overflows"


class NonFiniteError(ValueError):
    """A loss, an activation or gradient a stage sends, a buffer or a parameter is nan or inf; the message
    names the stage, the action, the batch, the tick and the tensor (the CLI prints it as one line)."""


def all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every element of every tensor is finite (None and empty tensors skipped); one host sync."""
    groups: dict[tuple, list[torch.Tensor]] = {}  # (device index, dtype) -> small tensors, scanned
    big: list[torch.Tensor] = []                  # summed
    for t in tensors:
        if t is None or not (t.is_floating_point() or t.is_complex()):  # integers are always finite
            continue
        if t.is_complex():
            t = torch.view_as_real(t)
        n = t.numel()
        if n and n < SMALL and t.dtype in SCANNED and (t.is_cpu or t.is_cuda):
            groups.setdefault((t.get_device(), t.dtype), []).append(t)  # get_device: -1 on the CPU
        elif n:
            big.append(t)
    flags = []  # a device's groups: 1 if it holds a nan or an inf
    for group in groups.values():
        found = _scan(group)
        if found is None:
            big.extend(group)  # the kernel refused it
        elif isinstance(found, float):
            if found:  # a CPU group, read at once
                return False
        else:
            flags.append(found)
    scanned = len(flags)
    if big:  # x * 0: 0 where x is finite, nan where it is not
        flags.append((torch.stack([_wide(t).sum() for t in big]).float().sum() * 0).reshape(1))
    if not flags or (flags[0] if len(flags) == 1 else torch.cat([f.to(flags[0].device) for f in flags]).sum()
                     ).item() == 0:
        return True
    if any(f.item() for f in flags[:scanned]):
        return False
    ends = [e for t in big for e in torch.aminmax(_wide(t))]  # a sum is not finite: a nan or an inf, or an overflow
    return bool(torch.isfinite(torch.stack(ends)).all())


SMALL = 1 << 16  # elements: tensors below this are scanned in one call (per-call cost dominates them)
SCANNED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # what the scanning kernel takes
_ONE: dict[torch.device, torch.Tensor] = {}  # the scale 1, per device


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t``, or as float32 where its dtype has no sum (the float8 types)."""
    return t if t.dtype in SCANNED else t.float()


def _scan(group: list[torch.Tensor]) -> torch.Tensor | float | None:
    """Whether an element of ``group`` (one device, one dtype) is a nan or an inf, from one call of the scanning
    kernel: on the CPU 1.0 or 0.0 (read through numpy: no more tensor ops), elsewhere a one-element tensor (read
    later, with the other checks, in one sync); None if the kernel refuses the group (e.g. an expanded view,
    which it cannot write back)."""
    dev = group[0].device
    one = _ONE.get(dev)
    if one is None:
        one = _ONE.setdefault(dev, torch.ones(1, device=dev))
    cpu = dev.type == "cpu"
    if cpu:
        found, view = _cpu_flag()
        view[0] = 0.0
    else:
        found = torch.zeros(1, device=dev)
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, one)
    except (RuntimeError, NotImplementedError):
        return None
    return float(view[0]) if cpu else found


_LOCAL = threading.local()


def _cpu_flag():
    """This thread's CPU flag tensor and its numpy view (a stage per thread: no flag is shared)."""
    flag = getattr(_LOCAL, "flag", None)
    if flag is None:
        t = torch.zeros(1)
        flag = _LOCAL.flag = (t, t.numpy())
    return flag


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
