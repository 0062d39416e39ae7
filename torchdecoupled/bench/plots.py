"""BENCHMARKS.md's figures (PNG, matplotlib's Agg backend): the speed run's rates per contender, stage 0's
stored bytes per method and K (docs/memory.md), test accuracy per method and K (docs/accuracy*.md)."""
from __future__ import annotations

COLOURS = {"bp": "#8c8c8c", "ours": "#1f77b4", "pipe": "#ff7f0e"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _family(contender: str) -> str:
    return "bp" if contender.startswith("bp_") else "pipe" if contender.startswith("pipelining_") else "ours"


def speed(results: list[dict], path: str) -> None:
    """One panel per model: horizontal bars of images/s (tokens/s), BP with one thread dashed."""
    plt = _pyplot()
    rows = max(len(r["per_s"]) for r in results)
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 0.45 * rows + 1.5), squeeze=False)
    for ax, r in zip(axes[0], results):
        names = list(r["per_s"])[::-1]
        values = [r["per_s"][c] for c in names]
        ax.barh(names, values, color=[COLOURS[_family(c)] for c in names])
        if "bp_1thread" in r["per_s"]:
            ax.axvline(r["per_s"]["bp_1thread"], color="k", linestyle="--", linewidth=0.8)
        ax.set_xlabel(f"{r.get('unit', 'images')}/s (median)")
        ax.set_title(f"{r['model']}, K = 2, batch {r.get('batch', '?')}")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def memory(rows: list[dict], path: str) -> None:
    """Grouped bars: stage 0's stored MB (live recompute graph included) per method, one group per K."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ks = sorted({r["K"] for r in rows})
    labels = list(dict.fromkeys(f"{r['method']} ({r['partition']})" for r in rows))
    width = 0.8 / max(1, len(labels))
    for i, lab in enumerate(labels):
        mine = {r["K"]: r["stage0_live_mb"] for r in rows if f"{r['method']} ({r['partition']})" == lab}
        vals = [mine.get(k, 0) for k in ks]
        ax.bar([k + (i - (len(labels) - 1) / 2) * width for k in ks], vals, width, label=lab)
    ax.set_xticks(ks, [f"K = {k}" for k in ks])
    ax.set_ylabel("stage 0 stored, MB (+ live graph)")
    ax.set_title("ResNet-56, batch 128: stash (FDG) vs recompute (DSP, DTRP)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy(panels: list[tuple[str, dict]], path: str, bp: dict) -> None:
    """One panel per table: test accuracy (%) per method, one bar per K; ``bp`` maps a panel title to the
    label of its BP row (drawn as a line)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 3.8), squeeze=False)
    for ax, (title, table) in zip(axes[0], panels):
        methods = [m for m in table if m != bp.get(title)]
        ks = sorted({k for m in methods for k in table[m]})
        width = 0.8 / max(1, len(ks))
        for j, k in enumerate(ks):
            ax.bar([i + (j - (len(ks) - 1) / 2) * width for i in range(len(methods))],
                   [table[m].get(k, 0) for m in methods], width, label=k)
        ref = table.get(bp.get(title), {})
        if ref:
            ax.axhline(next(iter(ref.values())), color="k", linestyle="--", linewidth=0.8, label="BP")
        low = min([v for m in methods for v in table[m].values() if v > 50] + [90])
        ax.set_ylim(low - 2, 100)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("test accuracy, %")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
