"""Where to cut: simulate a cut (``events.simulate``) and search the cut points that minimise the period.

The search starts from the two balances ``partition.balance_costs`` computes (parameters; measured F + B,
with the recompute counted where the method recomputes) and walks downhill: move one cut point by one
layer while that shortens the simulated period (best move first, every stage keeping a layer with
trainable parameters). The parameter balance is always among the candidates, so the best cut is never
slower than it in the simulation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..methods import Method
from ..partition import balance_costs
from ..schedule import Schedule
from .costs import Costs
from .events import simulate
from .links import Link
from .profile import memory, stage_costs

WARMUP, STEPS = 2, 24  # ticks skipped after the fill, ticks timed


@dataclass
class Setup:
    costs: Costs          # at the per-replica batch
    method: Method
    stages: int
    link: Link
    replicas: int = 1
    cores: int | None = None
    steps: int = STEPS
    warmup: int = WARMUP
    optimizer: str = "sgd"
    period: str = "max"   # "mean": the speed benchmark's figure over a short window (events.Timing.period)
    contention: float = 0.0  # compute slows by this fraction while several processes share a host
    _seen: dict = field(default_factory=dict)

    @property
    def first(self) -> int:
        return 2 * (self.stages - 1) + self.warmup

    def schedule(self) -> Schedule:
        m = self.method
        return Schedule(m.family, self.stages, self.first + self.steps, m.order, m.accumulate)


def evaluate(setup: Setup, boundaries) -> dict:
    """Simulate one cut: period (s per tick), per-stage compute per tick, idle fraction, memory."""
    key = tuple(boundaries)
    if key in setup._seen:
        return setup._seen[key]
    sched = setup.schedule()
    scs = stage_costs(setup.costs, setup.method, key, setup.link, setup.replicas)
    if setup.contention and setup.stages * setup.replicas > 1:
        scs = [dataclasses.replace(s, work={op: v * (1 + setup.contention) for op, v in s.work.items()}) for s in scs]
    timing = simulate(sched, [s.work for s in scs], [s.msg_bytes for s in scs], setup.link,
                      allreduce=[s.allreduce for s in scs], cores=setup.cores, weight=setup.replicas)
    period = timing.period(setup.first, setup.steps, setup.period)
    window = period * setup.steps
    updates = [sum(a.op == "U" for t in range(setup.first, setup.first + setup.steps) for a in sched.actions(t, k))
               / setup.steps for k in range(setup.stages)]
    result = {
        "boundaries": list(key), "period_s": period,
        "stage_s": [s.work["F"] + s.work["B"] + u * (s.work["U"] + s.allreduce) for s, u in zip(scs, updates)],
        "idle": [max(0.0, 1 - timing.busy(k, setup.first, setup.steps) / window) for k in range(setup.stages)],
        "message_bytes": [s.msg_bytes for s in scs[:-1]],
        "allreduce_s": [s.allreduce for s in scs],
        "memory": memory(Schedule(sched.family, setup.stages, 2 * setup.stages + 2, sched.order, sched.accumulate),
                         scs, setup.optimizer),
    }
    setup._seen[key] = result
    return result


def trainable_flags(costs: Costs) -> list[bool]:
    return [c.trainable_bytes > 0 for c in costs.layers]


def starts(setup: Setup) -> dict[str, list[int]]:
    """The balances the search starts from: {"params": cuts, "time": cuts}."""
    c, K, flags = setup.costs, setup.stages, trainable_flags(setup.costs)
    recompute = setup.method.activations == "recompute"
    return {"params": balance_costs([x.param_bytes for x in c.layers], K, trainable=flags),
            "time": balance_costs([(x.forward_s, x.backward_s) for x in c.layers], K, recompute=recompute,
                                  trainable=flags)}


def _neighbours(cuts: list[int], flags: list[bool]) -> list[list[int]]:
    n, out = len(flags), []
    for i in range(len(cuts)):
        for step in (-1, 1):
            new = cuts[:i] + [cuts[i] + step] + cuts[i + 1:]
            edges = [0, *new, n]
            if all(a < b and any(flags[a:b]) for a, b in zip(edges, edges[1:])):
                out.append(new)
    return out


def best_cut(setup: Setup, max_moves: int = 200) -> tuple[dict, dict]:
    """(the best cut's result, the params balance's result)."""
    begin = starts(setup)
    flags = trainable_flags(setup.costs)
    params = evaluate(setup, begin["params"])
    best = params
    for cuts in begin.values():
        here = evaluate(setup, cuts)
        for _ in range(max_moves):
            moves = [evaluate(setup, c) for c in _neighbours(here["boundaries"], flags)]
            step = min(moves, key=lambda r: r["period_s"], default=None)
            if step is None or step["period_s"] >= here["period_s"] * (1 - 1e-9):
                break
            here = step
        if here["period_s"] < best["period_s"] * (1 - 1e-9):
            best = here
    return best, params
