"""A discrete-event simulation of one pipeline running a Schedule, in seconds instead of ticks.

Each stage is a process that walks ``schedule.actions(t, k)`` tick by tick, in order (the distributed
engine's loop, ``engines/dist_worker.py``). An action that consumes a message (``schedule.message_needed``:
an activation from below for F, a gradient from above for B) starts when the message has arrived; a message
sent at the end of an action arrives ``latency + bytes / bandwidth`` later, messages in one direction of one
link going one after another. U first waits for the all-reduce of the stage's replicas (``allreduce``
seconds, by symmetry the replicas reach it together), then runs. So the fill, the steady state, BP's locked
chain (its messages are used in the same tick) and a message that arrives late all come out of the same walk.

Over-subscription (more processes than ``cores``): processor sharing. While n processes compute (each
stage counts ``weight`` processes, its replicas, which by symmetry run alike) each runs at ``min(1, cores/n)``
of its speed; a process waiting for a message uses no core.

Tick marks are taken as the benchmark takes them (``bench/runners.py``): the clock when a stage starts tick
t, i.e. when it finished its last action of an earlier tick. A stage's period is
``(mark[first + steps] - mark[first]) / steps``; ``Timing.period`` takes the slowest stage's or the mean.

    tick        0        1           2          (FDG, K = 2, order "bf", unit F = B, zero-cost links)
    stage0   [F0]     [F1]        [B0 U][F2] ...
    stage1            [F0 B0 U]   [F1 B1 U]  ...
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schedule import Schedule, ScheduleError, message_needed, messages_sent
from .links import Link

EPS = 1e-12


@dataclass
class Timing:
    marks: list[list[float]]            # marks[k][t]: when stage k starts tick t (t = 0 .. num_ticks)
    spans: list[list[tuple]]            # spans[k]: (tick, action, start, end) of every action
    makespan: float

    def period(self, first: int, steps: int, how: str = "max") -> float:
        """Seconds per tick over ticks first .. first + steps: the slowest stage's (``"max"``, the rate the
        pipeline sustains) or the mean over stages (``"mean"``, what the speed benchmark reports; in a short
        window after the fill the stages behind the slowest still drain what it buffered, faster)."""
        per = [(m[first + steps] - m[first]) / steps for m in self.marks]
        if how not in ("max", "mean"):
            raise ValueError(f"unknown period {how!r} (valid: max, mean)")
        return max(per) if how == "max" else sum(per) / len(per)

    def busy(self, k: int, first: int, steps: int) -> float:
        """Seconds stage k spends inside actions (not waiting for messages) in ticks first .. first+steps-1."""
        return sum(e - s for t, _, s, e in self.spans[k] if first <= t < first + steps)


class _Proc:
    def __init__(self, schedule: Schedule, k: int):
        self.k = k
        self.actions = [(t, a) for t in range(schedule.num_ticks) for a in schedule.actions(t, k)]
        self.idx, self.state, self.remaining, self.until, self.start = 0, "ready", 0.0, 0.0, 0.0
        self.spans: list[tuple] = []


def simulate(schedule: Schedule, work: list[dict], msg_bytes: list[int], link: Link, *,
             allreduce: list[float] | None = None, cores: int | None = None, weight: int = 1) -> Timing:
    """Run the schedule. ``work[k]`` = {"F": s, "B": s, "U": s} compute seconds of stage k's actions;
    ``msg_bytes[k]``: the activation stage k sends up (its gradient comes back the same size);
    ``allreduce[k]``: seconds of stage k's gradient all-reduce before each U."""
    K = schedule.num_stages
    if len(work) != K or len(msg_bytes) < K - 1:
        raise ValueError(f"{K} stages need {K} work entries and {K - 1} message sizes "
                         f"(got {len(work)} and {len(msg_bytes)})")
    allreduce = allreduce or [0.0] * K
    procs = [_Proc(schedule, k) for k in range(K)]
    arrivals: dict[tuple, float] = {}
    link_free: dict[tuple, float] = {}
    now = 0.0
    while True:
        _start_ready(procs, schedule, work, allreduce, arrivals, now)
        if all(p.state == "done" for p in procs):
            break
        running = [p for p in procs if p.state == "run"]
        n = len(running) * weight
        rate = 1.0 if cores is None or n <= cores else cores / n
        times = [now + p.remaining / rate for p in running] + [p.until for p in procs if p.state in ("wait", "comm")]
        if not times:
            stuck = ", ".join(f"stage {p.k}: {p.actions[p.idx][1]} of tick {p.actions[p.idx][0]}"
                              for p in procs if p.state == "ready")
            raise ScheduleError(f"the simulated run deadlocks ({stuck} wait for a message never sent)")
        nxt = min(times)
        for p in running:
            p.remaining -= (nxt - now) * rate
        now = nxt
        for p in procs:
            if p.state == "wait" and p.until <= now + EPS:
                p.state = "ready"
            elif p.state == "comm" and p.until <= now + EPS:
                p.state, p.remaining = "run", work[p.k]["U"]
            elif p.state == "run" and p.remaining <= EPS:
                _finish(p, schedule, msg_bytes, link, arrivals, link_free, now)
    return Timing([_marks(p.spans, schedule.num_ticks) for p in procs], [p.spans for p in procs], now)


def _start_ready(procs, schedule, work, allreduce, arrivals, now) -> None:
    for p in procs:
        if p.state != "ready":
            continue
        if p.idx == len(p.actions):
            p.state = "done"
            continue
        _, a = p.actions[p.idx]
        key = message_needed(schedule, a)
        if key is not None:
            if key not in arrivals:
                continue  # blocked: the message is not sent yet
            if arrivals[key] > now + EPS:
                p.state, p.until = "wait", arrivals[key]
                continue
        p.start = now
        if a.op == "U" and allreduce[p.k] > 0:
            p.state, p.until = "comm", now + allreduce[p.k]
        else:
            p.state, p.remaining = "run", work[p.k][a.op]


def _finish(p, schedule, msg_bytes, link, arrivals, link_free, now) -> None:
    t, a = p.actions[p.idx]
    p.spans.append((t, str(a), p.start, now))
    for key in messages_sent(schedule, a):
        _, src, dst, _ = key
        nbytes = msg_bytes[min(src, dst)]
        begin = max(now, link_free.get((src, dst), 0.0))
        link_free[(src, dst)] = begin + nbytes / link.bandwidth
        arrivals[key] = begin + nbytes / link.bandwidth + link.latency
    p.idx += 1
    p.state = "ready"


def _marks(spans, num_ticks: int) -> list[float]:
    """marks[t]: the end of the last action of a tick before t (0 before any)."""
    last = [0.0] * (num_ticks + 1)
    for t, _, _, end in spans:
        last[t + 1] = max(last[t + 1], end)
    for t in range(1, num_ticks + 1):
        last[t] = max(last[t], last[t - 1])
    return last
