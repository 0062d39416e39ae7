"""The measured pipeline: when each stage process computed F, B, U, waited, sent and evaluated.

Each process keeps a :class:`Recorder`; at the end of a run the engine gathers them and writes

- ``timeline.json``: a Chrome trace (open it in https://ui.perfetto.dev or chrome://tracing): one
  process row per stage, one thread row per replica; waits are drawn nested inside the action that
  blocked;
- ``timeline.png``: a Gantt chart of the first ticks (matplotlib, Agg backend);

and every epoch record gets each stage's **idle fraction** (the bubble): the share of the training
wall time in which the stage did not compute, ``1 - (time in F/B/U - time blocked in them) / elapsed``.
Evaluation time is excluded. Times are nanoseconds since the moment all processes left a common
barrier, so rows of different processes line up to within a barrier's skew.
"""
from __future__ import annotations

import json
import time

MAX_EVENTS = 200_000   # per process; later events still count in the idle fraction
MIN_WAIT_NS = 20_000   # shorter waits (the message was already there) count but are not drawn
GANTT_TICKS = 40       # ticks drawn in the PNG
# Okabe-Ito colours (told apart with colour-blindness too) and two greys of different lightness
COLORS = {"F": "#0072B2", "B": "#E69F00", "U": "#009E73", "wait": "#D0D0D0", "send": "#505050",
          "eval": "#CC79A7"}


class Recorder:
    """Per-process record of intervals ``(category, name, tick, start_ns, end_ns)``."""

    def __init__(self, enabled: bool = True, limit: int = MAX_EVENTS):
        self.enabled, self.limit = enabled, limit
        self.events: list[tuple[str, str, int, int, int]] = []
        self.tick = -1
        self.start()

    def start(self) -> None:
        """Set the time origin (call right after a barrier shared by all processes)."""
        self.origin = time.perf_counter_ns()
        self.window_start, self.busy_ns, self.blocked_ns = self.origin, 0, 0
        self.total_elapsed_ns, self.total_busy_ns = 0, 0

    def _add(self, cat: str, name: str, t0: int, t1: int) -> None:
        if self.enabled and len(self.events) < self.limit:
            self.events.append((cat, name, self.tick, t0 - self.origin, t1 - self.origin))

    def action(self, op: str, name: str, t0: int, t1: int) -> None:
        self.busy_ns += t1 - t0
        self._add(op, name, t0, t1)

    def wait(self, what: str, t0: int, t1: int) -> None:
        """Time blocked inside an action: on a message (``wait ...``) or on a send (``send ...``)."""
        self.blocked_ns += t1 - t0
        if t1 - t0 >= MIN_WAIT_NS:
            self._add("send" if what.startswith("send") else "wait", what, t0, t1)

    def span(self, cat: str, name: str, t0: int, t1: int) -> None:
        self._add(cat, name, t0, t1)

    def close_window(self) -> float:
        """Idle fraction of the window that ends now (it began at start() or at open_window())."""
        now = time.perf_counter_ns()
        elapsed, busy = now - self.window_start, self.busy_ns - self.blocked_ns
        self.total_elapsed_ns += elapsed
        self.total_busy_ns += busy
        self.busy_ns = self.blocked_ns = 0
        self.window_start = now
        return idle(busy, elapsed)

    def open_window(self) -> None:
        """Start the next window now: what happened since close_window() (an evaluation) does not count."""
        self.window_start = time.perf_counter_ns()
        self.busy_ns = self.blocked_ns = 0

    @property
    def total_idle(self) -> float:
        return idle(self.total_busy_ns, self.total_elapsed_ns)

    def export(self, **who) -> dict:
        return {**who, "events": self.events, "idle": self.total_idle, "dropped": len(self.events) >= self.limit}


def idle(busy_ns: int, elapsed_ns: int) -> float:
    return round(max(0.0, 1.0 - busy_ns / elapsed_ns), 4) if elapsed_ns > 0 else 0.0


def chrome_trace(traces: list[dict]) -> dict:
    """Chrome trace events from the exported recorders (keys: stage, replica, rank, events)."""
    out = []
    for tr in traces:
        pid, tid = tr["stage"], tr["rank"]
        out.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"stage {pid}"}})
        out.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}})
        out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                    "args": {"name": f"replica {tr['replica']} (rank {tid}), idle {tr['idle']:.0%}"}})
        for cat, name, tick, t0, t1 in tr["events"]:
            out.append({"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tid, "ts": t0 / 1e3,
                        "dur": (t1 - t0) / 1e3, "args": {"tick": tick}})
    return {"traceEvents": out, "displayTimeUnit": "ms"}


def write_chrome_trace(path: str, traces: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump(chrome_trace(traces), f)


def plot_gantt(path: str, traces: list[dict], ticks: int = GANTT_TICKS, title: str = "") -> None:
    """A PNG Gantt chart of ticks [0, ticks): one row per rank, F/B/U bars with waits drawn over them."""
    import matplotlib.pyplot as plt

    fig = gantt_figure(traces, ticks, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def gantt_figure(traces: list[dict], ticks: int = GANTT_TICKS, title: str = ""):
    """The matplotlib figure of :func:`plot_gantt`; the legend sits below the axis label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = sorted(traces, key=lambda tr: (tr["stage"], tr["replica"]))
    shown = [[e for e in tr["events"] if e[2] < ticks] for tr in rows]
    label = sum(e[0] in ("F", "B") for events in shown for e in events) <= 150  # while bars are wide enough
    fig, ax = plt.subplots(figsize=(12, 1.6 + 0.6 * len(rows)), layout="constrained")
    end = max((e[4] for events in shown for e in events), default=1) / 1e6
    for i, events in enumerate(shown):
        y = len(rows) - 1 - i
        for cat in ("F", "B", "U", "eval", "wait", "send"):  # waits last: on top of the action they block
            bars = [(t0 / 1e6, max((t1 - t0) / 1e6, end / 2000)) for c, _, _, t0, t1 in events if c == cat]
            if bars:
                ax.broken_barh(bars, (y - 0.4, 0.8), facecolors=COLORS[cat], edgecolor="none")
        if label:
            for cat, name, _, t0, t1 in events:
                if cat in ("F", "B") and (t1 - t0) / 1e6 > end / 80:  # only where the name fits
                    ax.text((t0 + t1) / 2e6, y, name, ha="center", va="center", fontsize=6,
                            color="white" if cat == "F" else "black")  # readable on dark blue, on orange
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"stage {tr['stage']} r{tr['replica']} (idle {tr['idle']:.0%})" for tr in reversed(rows)])
    ax.set_xlabel("ms since start")
    ax.set_xlim(0, end * 1.01)
    ax.set_title(title or f"measured timeline, ticks 0-{ticks - 1} (full trace: timeline.json)")
    fig.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items()], loc="outside lower center", ncol=6,
               fontsize=8, frameon=False)
    return fig
