"""Run a module with other tensors in place of some of its parameters and buffers: a Stage's forward on a
weight snapshot (stash) or on copies of its BatchNorm statistics (recompute).

What ``torch.func.functional_call`` does, with the walk over the module done once: ``Slots`` finds, when a
Stage is built, every place a named tensor lives (each alias of a tied weight too), and ``substituted``
only swaps dictionary entries (``functional_call`` re-walks the module and unties its weights on every
call: 0.1-0.5 ms a forward on this machine, a tick's share of a small model).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class Slots:
    """Every place of each of ``module``'s parameters and buffers, by the name ``named_parameters()`` /
    ``named_buffers()`` give it: ``(the submodule's _parameters or _buffers, attribute)``, one per alias."""

    def __init__(self, module: nn.Module):
        self.places: dict[str, list[tuple[dict, str]]] = {}
        for kind, named, dedup in (("_parameters", module.named_parameters, module.named_parameters()),
                                   ("_buffers", module.named_buffers, module.named_buffers())):
            first = {id(t): n for n, t in dedup}  # the name each tensor is known by
            for name, t in named(remove_duplicate=False):
                prefix, _, attr = name.rpartition(".")
                owner = module.get_submodule(prefix) if prefix else module
                self.places.setdefault(first.get(id(t), name), []).append((getattr(owner, kind), attr))

    @contextlib.contextmanager
    def substituted(self, tensors: dict[str, torch.Tensor]):
        """Inside the block, the module holds ``tensors`` (by name) in place of its own; restored after."""
        swapped = []
        try:
            for name, t in tensors.items():
                places = self.places.get(name)
                if places is None:
                    raise KeyError(f"the module has no parameter or buffer named {name!r}")
                for table, attr in places:
                    swapped.append((table, attr, table[attr]))
                    table[attr] = t
            yield
        finally:
            for table, attr, old in reversed(swapped):
                table[attr] = old
