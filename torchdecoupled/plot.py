"""Plot run directories: test accuracy, train loss and per-stage staleness per epoch, one line per run."""
from __future__ import annotations

import json
import os
from typing import Sequence


def load_run(path: str) -> tuple[str, list[dict]]:
    metrics = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(metrics):
        raise FileNotFoundError(f"no metrics.jsonl in {path!r}: pass run directories written by `train --out`")
    with open(metrics) as f:
        records = [json.loads(line) for line in f if line.strip()]
    label = os.path.basename(os.path.normpath(path))
    summary = os.path.join(path, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            s = json.load(f)
        label = f"{s.get('method', label)} K={s.get('stages', '?')}"
    return label, records


def plot_runs(paths: Sequence[str], out: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(p) for p in paths]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, recs in runs:
        ep = [r["epoch"] + 1 for r in recs]
        axes[0].plot(ep, [100 * r["test_acc"] for r in recs], label=label)
        axes[1].plot(ep, [r["train_loss"] for r in recs], label=label)
        axes[2].plot(ep, [max(r["staleness"]["mean"]) for r in recs], label=label)
    for ax, title in zip(axes, ["test accuracy (%)", "train loss", "mean staleness tau of stage 0"]):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
