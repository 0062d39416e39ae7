"""Schedules as data: which stage does what in which tick, built from integers alone.

An :class:`Action` is ``(op, stage, batch)`` with ``op`` in F (forward), B (backward), U (update).
A :class:`Schedule` answers "what does stage k do in tick t" for K stages and N mini-batches; engines
interpret it and never ask which method is running. Semantics: ``shared/spec/methods.md``.

Families (``d_k`` = delay of stage k in ticks)::

    bp         F0..F(K-1), B(K-1)..B0, U of batch t, all in tick t            d_k = 0
    locked     batch t forward through all stages in tick t (forward locking);
               stage k does B of batch t-(K-1-k), then U                      d_k = K-1-k    (DDG, FR)
    decoupled  stage k does F of batch t-k and B of batch t-k-2(K-1-k)         d_k = 2(K-1-k) (FDG, ADL, ...)
    local      stage k does F, B, U of batch t-k (local losses)               d_k = 0        (DGL, InfoPro)

Fully decoupled, K = 3, N = 4, order "bf" (Zhuang et al. 2021, Fig. 2; stages as rows, ticks as columns)::

    tick     0     1     2        3          4          5       6       7
    stage0   F0    F1    F2       F3         B0 U       B1 U    B2 U    B3 U
    stage1         F0    F1       B0 U F2    B1 U F3    B2 U    B3 U
    stage2               F0 B0 U  F1 B1 U    F2 B2 U    F3 B3 U

A message (activation up, gradient down) sent in tick t is used in tick t+1, except the forward-locked
activations (and BP's gradients) which are used in the same tick. The run drains: every batch is
forwarded and backwarded at every stage, and ADL's last partial accumulation window is applied.
MAN's parameter messages (``params``): after its U of batch b, stage k > 0 sends its first layer's
parameters down, used by stage k-1's F of batch b + 2 in the next tick (``param_needed``; the table in
``methods/man.py``); the U actions then name their batch.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Callable, Iterable

OPS = ("F", "B", "U")
FAMILIES = ("bp", "locked", "decoupled", "local")
ORDERS = ("bf", "fb")


class ScheduleError(ValueError):
    """A schedule (or its parameters) is invalid or would deadlock."""


@dataclass(frozen=True)
class Action:
    op: str
    stage: int
    batch: int | None = None

    def __str__(self) -> str:
        return self.op if self.batch is None else f"{self.op}{self.batch}"


@dataclass(frozen=True)
class Schedule:
    family: str
    num_stages: int
    num_batches: int
    order: str = "bf"
    accumulate: int = 1
    params: bool = False  # MAN's parameter messages (methods/man.py): local family, accumulate 1

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ScheduleError(f"unknown schedule family {self.family!r} (valid: {', '.join(FAMILIES)})")
        if self.num_stages < 1:
            raise ScheduleError(f"num_stages must be >= 1, got {self.num_stages}")
        if self.num_batches < 1:
            raise ScheduleError(f"num_batches must be >= 1, got {self.num_batches}")
        if self.order not in ORDERS:
            raise ScheduleError(f"unknown order {self.order!r} (valid: bf, fb)")
        if self.accumulate < 1:
            raise ScheduleError(f"accumulate must be >= 1, got {self.accumulate}")
        if self.params and (self.family != "local" or self.accumulate != 1):
            raise ScheduleError(f"parameter messages need the local family with accumulate 1 (got family "
                                f"{self.family!r}, accumulate {self.accumulate})")

    # ---- timing of one batch at one stage -------------------------------------------------------
    def delay(self, k: int) -> int:
        """d_k: ticks between batch b's forward and its backward at stage k."""
        K = self.num_stages
        return {"bp": 0, "local": 0, "locked": K - 1 - k, "decoupled": 2 * (K - 1 - k)}[self.family]

    @property
    def delays(self) -> list[int]:
        return [self.delay(k) for k in range(self.num_stages)]

    def forward_tick(self, k: int, b: int) -> int:
        return b if self.family in ("bp", "locked") else b + k

    def backward_tick(self, k: int, b: int) -> int:
        return self.forward_tick(k, b) + self.delay(k)

    def loss_tick(self, b: int) -> int:
        """Tick in which the last stage computes the loss of batch b."""
        return self.forward_tick(self.num_stages - 1, b)

    @property
    def num_ticks(self) -> int:
        return max(self.backward_tick(k, self.num_batches - 1) for k in range(self.num_stages)) + 1

    def updates_after(self, b: int) -> bool:
        """Whether a stage updates right after the backward of batch b (accumulation window end)."""
        return (b + 1) % self.accumulate == 0 or b == self.num_batches - 1

    def update_before_forward(self, k: int) -> bool:
        """Whether, inside one tick, stage k's U runs before its F ("bf" order of the decoupled family)."""
        return self.family == "decoupled" and k < self.num_stages - 1 and self.order == "bf"

    # ---- what a stage does in a tick ------------------------------------------------------------
    def actions(self, t: int, k: int) -> list[Action]:
        fb = t - self.forward_tick(k, 0)
        bb = t - self.backward_tick(k, 0)
        f = [Action("F", k, fb)] if 0 <= fb < self.num_batches else []
        b = [Action("B", k, bb)] if 0 <= bb < self.num_batches else []
        u = [Action("U", k, bb if self.params else None)] if b and self.updates_after(bb) else []  # MAN: U<b>
        return b + u + f if self.update_before_forward(k) else f + b + u

    def grid(self) -> list[list[list[Action]]]:
        return [[self.actions(t, k) for k in range(self.num_stages)] for t in range(self.num_ticks)]

    # ---- staleness ------------------------------------------------------------------------------
    def _updates_among(self, n: int) -> int:
        """Number of updates triggered by the backwards of batches 0..n-1."""
        n = max(0, min(n, self.num_batches))
        return n // self.accumulate + (1 if n == self.num_batches and n % self.accumulate else 0)

    def staleness(self, k: int, b: int) -> int:
        """tau of batch b's gradient at stage k: updates before it is applied minus updates before its
        forward (spec, "Notation"). ADL's figure: tau = max(0, ceil((d_k - j) / M)) in steady state."""
        t_f = self.forward_tick(k, b)
        off = self.backward_tick(k, 0)
        seen = t_f - off + (1 if self.update_before_forward(k) else 0)  # backwards done before F of b
        return self._updates_among(b) - self._updates_among(seen)

    def to_dict(self) -> dict:
        return {
            "family": self.family, "stages": self.num_stages, "batches": self.num_batches,
            "order": self.order, "accumulate": self.accumulate, "delay": self.delays,
            "ticks": self.num_ticks, **({"params": True} if self.params else {}),
            "grid": [[[str(a) for a in cell] for cell in row] for row in self.grid()],
        }


def steady_staleness(d: int, j: int, m: int) -> int:
    """The ADL paper's closed form, tau = max(0, ceil((d - j) / M)), for cross-checks."""
    return max(0, math.ceil((d - j) / m))


# ---- executing a tick: shared by the dry run and the simulator ----------------------------------
def run_tick(schedule: Schedule, t: int, ready: Callable[[Action], bool], run: Callable[[Action], None],
             stage_order: Iterable[int] | None = None) -> None:
    """Run every action of tick t, each stage in its own order, as soon as its message is ready.

    Stages are visited in ``stage_order`` (any permutation gives the same result: messages are keyed by
    batch). Raises ScheduleError if no stage can make progress (a deadlock)."""
    order = list(range(schedule.num_stages)) if stage_order is None else list(stage_order)
    pending = {k: deque(schedule.actions(t, k)) for k in order}
    while any(pending.values()):
        progressed = False
        for k in order:
            while pending[k] and ready(pending[k][0]):
                run(pending[k].popleft())
                progressed = True
        if not progressed:
            stuck = ", ".join(f"stage {k}: {' '.join(map(str, q))}" for k, q in pending.items() if q)
            raise ScheduleError(f"deadlock in tick {t}: no stage can proceed ({stuck})")


def message_needed(schedule: Schedule, a: Action) -> tuple | None:
    """The message key ``(kind, src, dst, batch)`` an action consumes, or None."""
    K, k = schedule.num_stages, a.stage
    if a.op == "F" and k > 0:
        return ("act", k - 1, k, a.batch)
    if a.op == "B" and k < K - 1 and schedule.family != "local":
        return ("grad", k + 1, k, a.batch)
    return None


def messages_sent(schedule: Schedule, a: Action) -> list[tuple]:
    K, k = schedule.num_stages, a.stage
    if a.op == "F" and k < K - 1:
        return [("act", k, k + 1, a.batch)]
    if a.op == "B" and k > 0 and schedule.family != "local":
        return [("grad", k, k - 1, a.batch)]
    if a.op == "U" and schedule.params and k > 0 and a.batch + 2 < schedule.num_batches:
        return [("param", k, k - 1, a.batch)]  # MAN: theta after U of batch b, for stage k-1's F of b + 2
    return []


def param_needed(schedule: Schedule, a: Action) -> tuple | None:
    """MAN (``schedule.params``): the F of batch b >= 2 at stage k < K-1 first takes stage k+1's first-layer
    parameters after its U of batch b - 2 (sent in the tick before; the table in ``methods/man.py``)."""
    if schedule.params and a.op == "F" and a.stage < schedule.num_stages - 1 and a.batch >= 2:
        return ("param", a.stage + 1, a.stage, a.batch - 2)
    return None


def messages_needed(schedule: Schedule, a: Action) -> list[tuple]:
    """Every message key an action consumes: ``message_needed``'s, then ``param_needed``'s."""
    return [key for key in (message_needed(schedule, a), param_needed(schedule, a)) if key is not None]


def same_tick_allowed(schedule: Schedule, kind: str) -> bool:
    """Forward-locked families use an activation in the tick it is sent; BP also its gradients."""
    return (kind == "act" and schedule.family in ("bp", "locked")) or schedule.family == "bp"


def validate(schedule: Schedule) -> None:
    """Dry run without tensors: every B after its F, every message used after it is sent (in a later
    tick unless the family is locked), every U after a B, nothing left over. Raises ScheduleError."""
    K, N = schedule.num_stages, schedule.num_batches
    sent: dict[tuple, int] = {}
    forwarded: set[tuple[int, int]] = set()
    backwarded: set[tuple[int, int]] = set()
    unapplied = [0] * K
    tick = 0

    def ready(a: Action) -> bool:
        return all(key in sent and (sent[key] < tick or same_tick_allowed(schedule, key[0]))
                   for key in messages_needed(schedule, a))

    def run(a: Action) -> None:
        k, b = a.stage, a.batch
        if a.op == "F":
            if (k, b) in forwarded:
                raise ScheduleError(f"tick {tick}: stage {k} forwards batch {b} twice")
            forwarded.add((k, b))
        elif a.op == "B":
            if (k, b) not in forwarded:
                raise ScheduleError(f"tick {tick}: stage {k} backwards batch {b} before its forward")
            if (k, b) in backwarded:
                raise ScheduleError(f"tick {tick}: stage {k} backwards batch {b} twice")
            backwarded.add((k, b))
            unapplied[k] += 1
        elif a.op == "U":
            if unapplied[k] == 0:
                raise ScheduleError(f"tick {tick}: stage {k} updates with no gradient")
            unapplied[k] = 0
        for key in messages_needed(schedule, a):
            del sent[key]
        for m in messages_sent(schedule, a):
            sent[m] = tick

    for tick in range(schedule.num_ticks):
        run_tick(schedule, tick, ready, run)
    every = {(k, b) for k in range(K) for b in range(N)}
    if forwarded != every or backwarded != every:
        missing = sorted(every - backwarded)[:5]
        raise ScheduleError(f"schedule leaves work undone, e.g. (stage, batch) {missing}")
    if sent:
        raise ScheduleError(f"messages never used: {sorted(sent)[:5]}")
    if any(unapplied):
        raise ScheduleError(f"gradients never applied at stages {[k for k in range(K) if unapplied[k]]}")


def format_grid(schedule: Schedule, max_ticks: int | None = None) -> str:
    """Draw the schedule like the FDG paper's figure: stages as rows, ticks as columns."""
    ticks = range(schedule.num_ticks if max_ticks is None else min(max_ticks, schedule.num_ticks))
    cells = [[" ".join(map(str, schedule.actions(t, k))) for t in ticks] for k in range(schedule.num_stages)]
    width = max([len(c) for row in cells for c in row] + [len(str(ticks[-1]))]) + 2
    lines = ["tick    " + "".join(str(t).ljust(width) for t in ticks)]
    for k, row in enumerate(cells):
        lines.append(f"stage{k}  " + "".join(c.ljust(width) for c in row).rstrip())
    d = ", ".join(map(str, schedule.delays))
    how = schedule.family + (f", order {schedule.order}" if schedule.family == "decoupled" else "")
    how += f", accumulate {schedule.accumulate}" if schedule.accumulate > 1 else ""
    how += ", parameters down after U (MAN)" if schedule.params else ""
    lines.append(f"delay d_k = [{d}]   ({how})")
    return "\n".join(lines)


class EvalTicks(Mapping):
    """tick -> epoch whose evaluation follows that tick, computed, not stored (a run of 1e11 epochs costs
    nothing): epoch e < E-1 after the tick in which the last stage computes the loss of its last batch,
    ``loss_tick((e + 1) * per_epoch - 1)``; the final epoch after the pipeline drains (the last tick)."""

    def __init__(self, schedule: Schedule, per_epoch: int, epochs: int):
        self.per_epoch, self.epochs = per_epoch, epochs
        self.first, self.last = schedule.loss_tick(per_epoch - 1), schedule.num_ticks - 1

    def __getitem__(self, t: int) -> int:
        if t == self.last:
            return self.epochs - 1
        e, r = divmod(t - self.first, self.per_epoch)  # loss_tick(b) is b plus a constant
        if r or not 0 <= e < self.epochs - 1:
            raise KeyError(t)
        return e

    def __iter__(self) -> Iterator[int]:
        return (self.first + e * self.per_epoch if e < self.epochs - 1 else self.last for e in range(self.epochs))

    def __len__(self) -> int:
        return self.epochs


def eval_ticks(schedule: Schedule, per_epoch: int, epochs: int) -> EvalTicks:
    """The evaluation ticks of a run: ``t in evals``, ``evals[t]`` (the epoch), in tick order (``EvalTicks``)."""
    return EvalTicks(schedule, per_epoch, epochs)
