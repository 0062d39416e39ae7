"""The simulator: all K stages in one process, tick by tick, messages through in-memory mailboxes.

Deterministic: the result does not depend on the order in which the stages of a tick are visited
(``stage_order``), because every message is keyed by its batch and used in a later tick (or, for the
forward-locked families, after the action that sends it).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..boundary import to_device
from ..evaluation import EvalSum, eval_chunks
from ..schedule import Schedule, run_tick
from ..stage import Stage
from ..transport import LocalTransport
from ..worker import Worker


def run_sim(stages: Sequence[Stage], schedule: Schedule, batches, *, stage_order: Sequence[int] | None = None,
            on_tick: Callable[[int], None] | None = None, ticks: range | None = None,
            transport: LocalTransport | None = None) -> None:
    transport = transport if transport is not None else LocalTransport()
    shared = SharedBatches(batches, keep=len(stages) + 1)  # stage k reads batch b about k ticks after stage 0
    workers = [Worker(s, schedule, shared, transport) for s in stages]
    for t in ticks if ticks is not None else range(schedule.num_ticks):
        run_tick(schedule, t, lambda a: workers[a.stage].ready(a), lambda a: workers[a.stage].run(a),
                 stage_order)
        if on_tick is not None:
            on_tick(t)
    if (ticks is None or ticks.stop == schedule.num_ticks) and transport.pending():
        raise RuntimeError(f"messages left over after the last tick: {transport.pending()[:5]}")


class SharedBatches:
    """``batches.get(b)`` once per batch for all stages: the first stage takes its inputs and the last (and
    local heads) its targets from one read, instead of each reading (gathering, augmenting) it again. Keeps
    the ``keep`` latest batches; one read again after that is the same batch (reads depend on b only)."""

    def __init__(self, batches, keep: int):
        self.batches, self.keep, self.cache = batches, keep, {}

    def get(self, b: int):
        if b not in self.cache:
            if len(self.cache) >= self.keep:
                del self.cache[next(iter(self.cache))]  # the oldest read
            self.cache[b] = self.batches.get(b)
        return self.cache[b]


@torch.no_grad()
def evaluate(stages: Sequence[Stage], data, *, criterion: Callable | None = None, metrics=None,
             batch_size: int = 1000, keys: tuple[str, str] = ("x", "y")) -> dict:
    """Plain sequential forward of all stages in eval mode with the current weights, scored by
    ``evaluation.EvalSum``: ``test_loss`` by ``criterion`` (default: the last stage's, the training loss),
    ``test_acc`` where accuracy applies, ``test_<name>`` per metric. ``data``: ``(x, y)`` cut into rows of
    ``batch_size``, or an iterable of batches (``evaluation.eval_chunks``, which reads ``keys``)."""
    total = EvalSum(criterion if criterion is not None else stages[-1].criterion, metrics)
    for h, y in eval_chunks(data, batch_size, keys):
        for s in stages:
            h = s.predict(h)
        total.add(h, to_device(y, stages[-1].device))
    return total.result()
