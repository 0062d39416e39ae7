"""Which messages travel between two neighbouring stage processes, in which order, with which shapes.

Both ends of a channel derive the same ordered list from the schedule alone: the sender stage's
actions tick by tick (``messages_sent``), and after each evaluation tick the evaluation chunks that
replica 0 sends up. A message is one tensor per leaf of the stage boundary (a tensor, or a tuple or dict
of tensors: ``Boundary``); an activation carries every leaf, a gradient only the floating ones.
Shapes are agreed before any tensor travels: leaf i of stage k's output has shape ``(n, *shape_i)``
where n is the replica's slice of batch b (``size(b)``, which the data reader announces ahead of use,
``dist_feed``) or the evaluation chunk's size; the per-sample shapes come from a one-sample forward at
start-up (``dist_setup``). So a receiver can post its receives early, into buffers of the right size,
with no header message. MAN's "param" messages (``Schedule.params``) carry the sender's first-layer
parameters, their shapes from each end's own copy (``param_shapes``: the sender's layer, the receiver's
head's EMA). Under PETRA (``carries_input``) a gradient message is the pair (activation,
gradient): every leaf of the activation, then the floating leaves of its gradient. A run resumed from a
checkpoint taken after tick t plans from tick ``start = t + 1``: what was sent up to tick t and not yet used travels in the checkpoint.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten, treespec_dumps, treespec_loads

from ..schedule import Schedule, messages_sent

Key = tuple[str, int, int, int]


@dataclass(frozen=True)
class Boundary:
    """What one stage sends up: the pytree structure (as JSON: it travels between processes) and, per
    leaf, (per-sample shape, dtype)."""
    structure: str
    leaves: tuple[tuple[tuple[int, ...], torch.dtype], ...]

    @functools.cached_property
    def spec(self) -> TreeSpec:
        return treespec_loads(self.structure)

    def __reduce__(self):  # without the cached spec
        return Boundary, (self.structure, self.leaves)

    @staticmethod
    def of(out) -> "Boundary":
        leaves, spec = tree_flatten(out)
        bad = [type(v).__name__ for v in leaves if not isinstance(v, torch.Tensor) or v.dim() == 0]
        if bad:
            raise ValueError(f"a stage returned {type(out).__name__} holding {', '.join(bad)}: a stage boundary must "
                             f"be a tensor, or a tuple/list/dict of tensors, each with the batch as its first dimension")
        return Boundary(treespec_dumps(spec), tuple((tuple(v.shape[1:]), v.dtype) for v in leaves))

    @property
    def grads(self) -> list[int]:
        """Indices of the leaves that carry a gradient back (floating point)."""
        return [i for i, (_, dt) in enumerate(self.leaves) if dt.is_floating_point or dt.is_complex]


class MessagePlan:
    def __init__(self, schedule: Schedule, evals: dict[int, int], boundaries: list[Boundary],
                 size: Callable[[int], int], eval_sizes: list[int], replica: int, start: int = 0,
                 carries_input: bool = False, param_shapes: dict | None = None):
        self.schedule, self.evals, self.boundaries, self.start = schedule, evals, boundaries, start
        self.param_shapes = dict(param_shapes or {})  # MAN: src stage -> (shape, dtype) of its first layer's tensors
        self.carries_input = carries_input  # PETRA: a "grad" message is (activation, gradient), Stage.carries_input
        self.size, self.chunks, self.replica = size, list(eval_sizes), replica

    def between(self, src: int, dst: int) -> Iterator[Key]:
        """Every message src sends to dst from tick ``start`` on, in the order it sends them."""
        return (key for _, key in self.sent(src, dst))

    def sent(self, src: int, dst: int) -> Iterator[tuple[int, Key]]:
        """``between`` with the tick each message is sent in."""
        s = self.schedule
        for t in range(self.start, s.num_ticks):
            for a in s.actions(t, src):
                for key in messages_sent(s, a):
                    if key[2] == dst:
                        yield t, key
            if t in self.evals and self.replica == 0 and dst == src + 1:
                for i in range(len(self.chunks)):
                    yield t, ("eval", src, dst, self.evals[t] * len(self.chunks) + i)

    def _boundary(self, key: Key) -> tuple[Boundary, list[int], int]:
        kind, src, dst, b = key
        if kind == "eval":
            bd = self.boundaries[src]
            return bd, list(range(len(bd.leaves))), self.chunks[b % len(self.chunks)]
        bd = self.boundaries[src if kind == "act" else dst]
        return bd, (bd.grads if kind == "grad" else list(range(len(bd.leaves)))), self.size(b)

    def _pair(self, key: Key) -> bool:
        return self.carries_input and key[0] == "grad"

    def shapes(self, key: Key) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """(shape, dtype) of every tensor of the message, in the order they travel."""
        if key[0] == "param":  # MAN: the sender's first-layer parameters, no batch dimension
            return list(self.param_shapes[key[1]])
        bd, idx, n = self._boundary(key)
        if self._pair(key):
            idx = list(range(len(bd.leaves))) + idx
        return [((n, *bd.leaves[i][0]), bd.leaves[i][1]) for i in idx]

    def flatten(self, key: Key, tree) -> list[torch.Tensor]:
        """The tensors of a message from what the stage sent (a gradient: its floating leaves; a PETRA
        gradient message: the activation's leaves, then the gradient's; MAN's "param": its list of tensors)."""
        if key[0] == "param":
            return list(tree)
        if self._pair(key):
            x, grad = tree
            return self._flatten(("act", key[2], key[1], key[3]), x) + self._flatten(key, grad)
        return self._flatten(key, tree)

    def _flatten(self, key: Key, tree) -> list[torch.Tensor]:
        bd, idx, _ = self._boundary(key)
        leaves, spec = tree_flatten(tree)
        if spec != bd.spec:
            raise RuntimeError(f"{key}: the stage sent {spec}, but the structure agreed at start is {bd.spec}: a "
                               f"stage must return the same structure for every batch")
        return [leaves[i] for i in idx]

    def unflatten(self, key: Key, tensors: list[torch.Tensor]):
        """What the receiving stage gets: the boundary's structure (a gradient: None at integer leaves; a
        PETRA gradient message: the pair (activation, gradient); MAN's "param": the list of tensors)."""
        if key[0] == "param":
            return list(tensors)
        if self._pair(key):
            act = ("act", key[2], key[1], key[3])
            n = len(self._boundary(act)[1])
            return self._unflatten(act, tensors[:n]), self._unflatten(key, tensors[n:])
        return self._unflatten(key, tensors)

    def _unflatten(self, key: Key, tensors: list[torch.Tensor]):
        bd, idx, _ = self._boundary(key)
        leaves = [None] * len(bd.leaves)
        for i, t in zip(idx, tensors):
            leaves[i] = t
        return tree_unflatten(leaves, bd.spec)
