"""Plot run directories per epoch, one line per run: test accuracy, train and test loss, the staleness of
the most delayed stage and (``--engine dist``) the idle fraction. A panel appears where some run has its
numbers. A path is a run directory (it holds metrics.jsonl) or a directory of runs, such as
``compare --out``: every run directory under it.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

# (title, the value of one epoch record or None, log scale when every value is positive)
PANELS = [
    ("test accuracy (%)", lambda r: 100 * r["test_acc"] if "test_acc" in r else None, False),
    ("train loss", lambda r: r.get("train_loss"), True),
    ("test loss", lambda r: r.get("test_loss"), True),
    ("mean staleness tau (most delayed stage)", lambda r: max(r["staleness"]["mean"]) if "staleness" in r else None,
     False),
    ("idle fraction (mean over stages)",
     lambda r: sum(r["idle_fraction"]) / len(r["idle_fraction"]) if r.get("idle_fraction") else None, False),
]
STYLES = ["-", "--", ":", "-."]  # runs with equal numbers (sim and dist, same seed) stay visible on each other
# summary.json fields that tell runs apart; method and stages are always shown
FIELDS = [("method", "{}"), ("stages", "K={}"), ("engine", "{}"), ("replicas", "D={}")]


def find_runs(paths: Sequence[str]) -> list[str]:
    """The run directories: each path itself, or every directory under it holding metrics.jsonl."""
    runs = []
    for path in paths:
        found = sorted(d for d, _, files in os.walk(path) if "metrics.jsonl" in files)
        if not found:
            raise FileNotFoundError(f"no metrics.jsonl in or under {path!r}: pass run directories written by "
                                    f"`train --out` or `compare --out`")
        runs += found
    return runs


def load_run(path: str) -> tuple[dict, list[dict]]:
    """(summary.json, or {} if the run has none yet; the epoch records)."""
    with open(os.path.join(path, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    summary = os.path.join(path, "summary.json")
    if not os.path.exists(summary):
        return {}, records
    with open(summary) as f:
        return json.load(f), records


def run_labels(paths: Sequence[str], summaries: Sequence[dict]) -> list[str]:
    """``fdg K=3``, plus the engine and replicas where the runs differ in them, plus the directory where
    that still leaves two runs alike."""
    varies = {k for k, _ in FIELDS[2:] if len({s.get(k) for s in summaries}) > 1}
    labels = [" ".join(fmt.format(s[k]) for k, fmt in FIELDS if k in s and (k in varies or k in ("method", "stages")))
              for s in summaries]
    base = os.path.commonpath([os.path.abspath(p) for p in paths]) if len(paths) > 1 else ""
    out = []
    for lab, p in zip(labels, paths):
        where = os.path.relpath(os.path.abspath(p), base) if base else os.path.basename(os.path.normpath(p))
        out.append(where if not lab else lab if labels.count(lab) == 1 else f"{lab} ({where})")
    return out


def panels(histories: Sequence[list[dict]]) -> list[tuple]:
    """The PANELS some run has numbers for."""
    return [p for p in PANELS if any(p[1](r) is not None for recs in histories for r in recs)]


def plot_runs(paths: Sequence[str], out: str) -> str:
    """Draw the runs in or under ``paths`` into the PNG ``out``; returns ``out``."""
    import matplotlib.pyplot as plt

    fig = runs_figure(paths)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def runs_figure(paths: Sequence[str]):
    """The matplotlib figure of :func:`plot_runs`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    dirs = find_runs(paths)
    summaries, histories = zip(*(load_run(d) for d in dirs))
    shown = panels(histories)
    if not shown:
        raise ValueError(f"nothing to plot in {', '.join(dirs)}: their metrics.jsonl hold no finished epoch yet")
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    labels = run_labels(dirs, summaries)
    for ax, (title, value, log) in zip(axes.flat, shown):
        ys = []
        for i, (label, recs) in enumerate(zip(labels, histories)):
            pts = [(r["epoch"] + 1, value(r)) for r in recs if value(r) is not None]
            # drawn even without points: a run keeps its colour in every panel
            ax.plot([e for e, _ in pts], [y for _, y in pts], STYLES[i % len(STYLES)], label=label,
                    marker="." if len(pts) < 30 else None)
            ys += [y for _, y in pts]
        if log and ys and min(ys) > 0:
            _log_axis(ax, min(ys), max(ys))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    fig.legend(axes.flat[0].get_lines(), labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8,
               frameon=False)
    return fig


def _log_axis(ax, low: float, high: float) -> None:
    """A log y axis labelled 0.3, not 3 x 10^-1; under 1.5 decades also at 2, 3 and 5 x 10^k."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    if high / low < 30:
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.2g}" if f"{v:.0e}"[0] in "235" else ""))
