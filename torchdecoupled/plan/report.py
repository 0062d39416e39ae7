"""The planner's outputs: a text table, plan.json, and a PNG of speed-up and memory against K."""
from __future__ import annotations

import json
import os

MB = 2 ** 20


def table(results) -> str:
    """One row per (method, K): cut, per-stage tick time, throughput, speed-up, idle, peak memory."""
    rows = [("method", "K", "D", "cut (blocks)", "stage ms/tick", "ms/tick", "samples/s", "speed-up",
             "idle %", "memory MB/stage", "params cut ms")]
    for r in results:
        rows.append((r.method, str(r.stages), str(r.replicas), f"{r.boundaries} ({'/'.join(map(str, r.blocks))})",
                     "/".join(f"{s * 1e3:.1f}" for s in r.stage_s), f"{r.period_s * 1e3:.1f}", f"{r.throughput:.1f}",
                     f"{r.speedup:.2f}x", "/".join(f"{100 * i:.0f}" for i in r.idle),
                     "/".join(f"{m['total'] / MB:.0f}" for m in r.memory), f"{r.params_period_s * 1e3:.1f}"))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if c in (0, 3) else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    first = results[0] if results else None
    if first is not None:
        lines.append(f"BP on one device: {first.bp_period_s * 1e3:.1f} ms per batch of {first.batch}; link "
                     f"{first.link}; cores {first.cores or 'one per process'}. Memory: weights + gradients + "
                     f"optimizer + stored activations / inputs / weight versions + a recompute's live graph.")
    return "\n".join(lines)


def write(results, out: str, meta: dict) -> list[str]:
    """OUT/plan.json (meta + every result) and OUT/plan.png; returns the paths."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "plan.json")
    with open(path, "w") as f:
        json.dump({**meta, "results": [r.to_dict() for r in results]}, f, indent=1)
    return [path, figure(results, os.path.join(out, "plan.png"))]


def figure(results, path: str) -> str:
    """Speed-up over BP and peak memory of the busiest stage (and in all) against K, a line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    methods = list(dict.fromkeys(r.method for r in results))
    for i, m in enumerate(methods):
        rs = [r for r in results if r.method == m]
        ks = [r.stages for r in rs]
        a.plot(ks, [r.speedup for r in rs], marker="o", label=m)
        b.plot(ks, [max(x["total"] for x in r.memory) / MB for r in rs], marker="o", label=f"{m}: largest stage")
        b.plot(ks, [sum(x["total"] for x in r.memory) / MB for r in rs], ls="--", marker=".", color=f"C{i}",
               label=f"{m}: all stages (one replica)")
    if results:
        ks, d = sorted({r.stages for r in results}), results[0].replicas
        a.plot(ks, [k * d for k in ks], ":", color="gray", label="K x D (the limit)" if d > 1 else "K (the limit)")
    a.set_title("predicted speed-up over BP on one device")
    b.set_title("predicted memory (MB)")
    for ax in (a, b):
        ax.set_xlabel("stages K")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
