"""Scoring outputs against targets: the loss of any criterion, accuracy where it applies, extra metrics.

Pure: no engine, no stage. The simulator's ``evaluate`` and a distributed last stage (which sees only
outputs and targets, chunk by chunk) both sum with ``EvalSum``; ``Stage._loss`` uses the same rules.

- Samples: a batch holds ``n`` samples, the length of the first dimension of the first tensor leaf of
  its targets (outputs when the targets hold none); losses and metrics are averaged weighted by ``n``.
- Accuracy applies iff the targets are an integer tensor and the outputs a floating Tensor of shape
  ``targets.shape + (C,)``: classification (N, C) against (N,), token level (B, T, V) against (B, T).
  Then correct = (argmax(-1) == targets).sum() out of targets.numel(); elsewhere there is no accuracy.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Callable

import torch
from torch import nn

from .boundary import batch_size as num_samples
from .boundary import leaves, rows

RESERVED = ("loss", "acc")


def accuracy_counts(outputs, targets) -> tuple[torch.Tensor, int] | None:
    """(correct as a 0-d tensor, number of targets) where accuracy applies, else None."""
    if not (isinstance(targets, torch.Tensor) and isinstance(outputs, torch.Tensor)):
        return None
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        return None
    if not outputs.is_floating_point() or outputs.dim() == 0 or outputs.shape[:-1] != targets.shape:
        return None
    return (outputs.detach().argmax(-1) == targets).sum(), targets.numel()


def eval_chunks(data, batch_size: int = 1000, keys: tuple[str, str] = ("x", "y")):
    """The (inputs, targets) of ``data``, batch by batch (a generator).

    ``data`` is a tuple ``(x, y)`` (tensors, or pytrees of tensors that share their first dimension), cut
    into rows of ``batch_size``; or any other iterable of batches (a list, a DataLoader, a generator), used
    as they come, each an ``(inputs, targets)`` tuple or list, or a dict holding them under ``keys``
    (default ``("x", "y")``). A tuple is always read as ``(x, y)``: pass ready batches in a list.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"evaluation data is a tuple of {len(data)} items: pass (inputs, targets), or the "
                             f"batches in a list")
        return _cut(data[0], data[1], batch_size)
    if not isinstance(data, Iterable) or isinstance(data, (torch.Tensor, Mapping)):
        raise TypeError(f"evaluation data is a {type(data).__name__}: pass (inputs, targets) or an iterable "
                        f"of batches")
    return (_unpack(batch, keys) for batch in data)


def _cut(x, y, size: int):
    n = num_samples(x)
    bad = [tuple(t.shape) for t in leaves((x, y)) if isinstance(t, torch.Tensor) and (t.dim() == 0 or len(t) != n)]
    if bad:
        raise ValueError(f"inputs and targets must share their first dimension to be cut into batches: the inputs "
                         f"have {n} rows, tensors of shapes {bad} do not; give every tensor one row per sample")
    return ((rows(x, i, i + size), rows(y, i, i + size)) for i in range(0, n, size))


def _unpack(batch, keys: tuple[str, str]):
    if isinstance(batch, Mapping):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"batch dict has no {missing} (keys: {sorted(batch)}): pass keys=(inputs key, "
                             f"targets key)")
        return batch[keys[0]], batch[keys[1]]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    what = f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    raise ValueError(f"a batch must be an (inputs, targets) pair or a dict (got {what}): yield (x, y) batches")


def named_metrics(metrics) -> dict[str, Callable]:
    """``metrics`` (None, a dict name -> callable, or a list of callables named by ``__name__``) as a dict."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        if not isinstance(metrics, (list, tuple)):
            raise TypeError(f"metrics must be a dict name -> callable or a list of callables (got "
                            f"{type(metrics).__name__})")
        unnamed = [m for m in metrics if not hasattr(m, "__name__")]
        if unnamed:
            raise ValueError(f"metric {unnamed[0]!r} has no __name__: pass a dict name -> callable")
        names = [m.__name__ for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metrics share a name ({names}): pass a dict name -> callable")
        metrics = dict(zip(names, metrics))
    for name, fn in metrics.items():
        if not isinstance(name, str) or name in RESERVED or not callable(fn):
            raise ValueError(f"metric {name!r}: {fn!r} must be a callable(outputs, targets) -> scalar under a "
                             f"name other than {', '.join(RESERVED)}")
    return dict(metrics)


class EvalSum:
    """The running sums of an evaluation: ``add(outputs, targets)`` per chunk, ``result()`` at the end.

    criterion: ``criterion(outputs, targets) -> scalar``, a batch mean (default cross-entropy); metrics: as
    ``named_metrics`` reads them, each ``metric(outputs, targets) -> scalar`` a batch mean. The sums
    (``samples``, ``loss_sum``, ``correct``, ``targets``, ``metric_sums``) are plain numbers.
    """

    def __init__(self, criterion: Callable | None = None, metrics=None):
        self.criterion = criterion if criterion is not None else nn.functional.cross_entropy
        self.metrics = named_metrics(metrics)
        self.samples, self.loss_sum, self.correct, self.targets = 0, 0.0, 0, 0
        self.metric_sums = {name: 0.0 for name in self.metrics}

    @torch.no_grad()
    def add(self, outputs, targets) -> None:
        n = num_samples(targets, outputs)
        self.samples += n
        self.loss_sum += float(self.criterion(outputs, targets)) * n
        counts = accuracy_counts(outputs, targets)
        if counts is not None:
            self.correct += int(counts[0])
            self.targets += counts[1]
        for name, fn in self.metrics.items():
            self.metric_sums[name] += float(fn(outputs, targets)) * n

    def result(self) -> dict:
        """``test_loss``, ``test_acc`` (only where accuracy applied), ``test_<name>`` per metric."""
        if not self.samples:
            raise ValueError("nothing was evaluated: the evaluation data holds no samples")
        out = {"test_loss": self.loss_sum / self.samples}
        if self.targets:
            out["test_acc"] = self.correct / self.targets
        out.update({f"test_{name}": s / self.samples for name, s in self.metric_sums.items()})
        return out
