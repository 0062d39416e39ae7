"""The simulator: all K stages in one process, tick by tick, messages through in-memory mailboxes.

Deterministic: the result does not depend on the order in which the stages of a tick are visited
(``stage_order``), because every message is keyed by its batch and used in a later tick (or, for the
forward-locked families, after the action that sends it).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..schedule import Schedule, run_tick
from ..stage import Stage
from ..transport import LocalTransport
from ..worker import Worker


def run_sim(stages: Sequence[Stage], schedule: Schedule, batches, *, stage_order: Sequence[int] | None = None,
            on_tick: Callable[[int], None] | None = None, ticks: range | None = None,
            transport: LocalTransport | None = None) -> None:
    transport = transport if transport is not None else LocalTransport()
    workers = [Worker(s, schedule, batches, transport) for s in stages]
    for t in ticks if ticks is not None else range(schedule.num_ticks):
        run_tick(schedule, t, lambda a: workers[a.stage].ready(a), lambda a: workers[a.stage].run(a),
                 stage_order)
        if on_tick is not None:
            on_tick(t)
    if (ticks is None or ticks.stop == schedule.num_ticks) and transport.pending():
        raise RuntimeError(f"messages left over after the last tick: {transport.pending()[:5]}")


@torch.no_grad()
def evaluate(stages: Sequence[Stage], x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict:
    """Plain sequential forward of all stages in eval mode with the current weights."""
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        h = x[i:i + batch_size]
        for s in stages:
            h = s.predict(h)
        t = y[i:i + batch_size].to(h.device)
        loss += torch.nn.functional.cross_entropy(h.float(), t, reduction="sum").item()
        correct += int((h.argmax(1) == t).sum())
    return {"test_loss": loss / len(x), "test_acc": correct / len(x)}
