"""How much of FDG's gap to BP the delay-aware optimizers close, on MNIST-1D in the simulator.

Rows: BP (AdamW, one stage: K does not change BP's math), FDG with AdamW, FDG with nag-async (NAdam, beta1
0.99, decoupled weight decay: Ajanthan et al. 2025), FDG with AdamW under PipeMare's learning-rate correction
(Yang et al. 2021, T epochs). Columns: cnn1d_bn and the BN-free cnn1d at K = 4 (they have 4 blocks, so K = 4
is their deepest cut), and an 8-block BN-free MLP at K = 8. Writes a markdown table (docs/delay_optim.md).
``--recipe sgd --append`` adds BP, FDG and FDG + PipeMare with SGD (lr 0.1, momentum 0.9) on cnn1d at K = 3
and 4, where plain FDG collapses (docs/accuracy_cnn1d_nobn.md).

    python benchmarks/delay_optim.py [--epochs E] [--seeds 0,1] [--lr LR] [--pipemare-epochs T] [--out FILE]
    python benchmarks/delay_optim.py --recipe sgd --append
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from torchdecoupled.config import RunConfig
from torchdecoupled.metrics import machine
from torchdecoupled.run import train

ROWS = [("BP", "bp", "adamw", False), ("FDG AdamW", "fdg", "adamw", False),
        ("FDG nag-async", "fdg", "nag-async", False), ("FDG AdamW + PipeMare", "fdg", "adamw", True)]
MLP8 = {"hidden": (128,) * 7}  # 8 blocks
COLUMNS = [("cnn1d_bn", {}, 4, "cnn1d_bn K=4"), ("cnn1d", {}, 4, "cnn1d K=4"), ("mlp", MLP8, 8, "mlp8 K=8")]
# --recipe sgd: the setting where FDG collapses on the BN-free cnn1d (docs/accuracy_cnn1d_nobn.md)
SGD_ROWS = [("BP SGD", "bp", "sgd", False), ("FDG SGD", "fdg", "sgd", False),
            ("FDG SGD + PipeMare", "fdg", "sgd", True)]
SGD_COLUMNS = [("cnn1d", {}, 3, "cnn1d K=3"), ("cnn1d", {}, 4, "cnn1d K=4")]


def run_one(a, method: str, optimizer: str, pipemare: bool, model: str, opts: dict, K: int, seed: int) -> float:
    cfg = RunConfig(method=method, stages=K if method != "bp" else 1, dataset="mnist1d", model=model,
                    model_opts=dict(opts), epochs=a.epochs, lr=a.lr, optimizer=optimizer, weight_decay=a.wd,
                    lr_correction=f"pipemare {a.pipemare_epochs:g}" if pipemare else "none", seed=seed,
                    progress=False, threads=1)
    return train(cfg.resolved())["test_acc"]


def cell(accs: list[float], bp: float | None, base: float | None) -> str:
    m = 100 * statistics.mean(accs)
    s = f"{m:.1f} ± {100 * statistics.stdev(accs):.1f}" if len(accs) > 1 else f"{m:.1f}"
    if bp is None:
        return s
    s += f" ({m - 100 * bp:+.1f})"
    if base is not None and bp - base > 0.005:  # the share of FDG AdamW's gap to BP that the row closes
        s += f", {100 * (statistics.mean(accs) - base) / (bp - base):.0f}% of the gap"
    return s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lr", type=float, help="default 3e-3 (adamw), 0.1 (sgd)")
    p.add_argument("--wd", type=float, help="default 0.01 (adamw), 5e-4 (sgd)")
    p.add_argument("--pipemare-epochs", type=float, default=7.0)
    p.add_argument("--recipe", choices=["adamw", "sgd"], default="adamw",
                   help="sgd: BP, FDG and FDG + PipeMare with SGD momentum 0.9 on cnn1d at K = 3, 4")
    p.add_argument("--append", action="store_true", help="append the table to --out instead of replacing it")
    p.add_argument("--out", default="docs/delay_optim.md")
    a = p.parse_args()
    global ROWS, COLUMNS
    if a.recipe == "sgd":
        ROWS, COLUMNS = SGD_ROWS, SGD_COLUMNS
    a.lr = a.lr or (3e-3 if a.recipe == "adamw" else 0.1)
    a.wd = (0.01 if a.recipe == "adamw" else 5e-4) if a.wd is None else a.wd
    done: dict[tuple, float] = {}  # BP does not depend on K: one run per model and seed
    seeds = [int(s) for s in a.seeds.split(",")]
    acc: dict[tuple[str, str], list[float]] = {}
    start, cpu = time.time(), time.process_time()
    for label, method, optimizer, pm in ROWS:
        for model, opts, K, col in COLUMNS:
            for seed in seeds:
                key = (method, optimizer, pm, model, str(opts), K if method != "bp" else 1, seed)
                v = done[key] = done[key] if key in done else run_one(a, method, optimizer, pm, model, opts, K, seed)
                acc.setdefault((label, col), []).append(v)
                print(f"{label:<22} {col:<13} seed {seed}  test_acc {v:.4f}", file=sys.stderr, flush=True)
    lines = table(a, acc) if a.recipe == "adamw" else sgd_table(a, acc)
    m = machine()
    lines += ["", "Command: `" + " ".join(["python", "benchmarks/delay_optim.py", *sys.argv[1:]]) + "`  ",
              f"Machine: {m['platform']}, {m['cpus']} CPUs (one thread per run), Python {m['python']}, torch "
              f"{m['torch']}, commit {m['commit']}; {time.process_time() - cpu:.0f} s of CPU "
              f"({time.time() - start:.0f} s wall).", ""]
    with open(a.out, "a" if a.append else "w") as f:
        f.write(("\n" if a.append else "") + "\n".join(lines))
    print("\n".join(lines))


def table(a, acc: dict) -> list[str]:
    cols = [c[3] for c in COLUMNS]
    lines = ["# Delay-aware optimizers on mnist1d: how much of FDG's gap to BP they close", "",
             f"{a.epochs} epochs, batch 50, lr {a.lr:g}, weight decay {a.wd:g} (decoupled), cosine schedule per "
             f"epoch, seeds {a.seeds}, simulator engine, FDG order bf (beta 1). nag-async: NAdam with beta1 0.99, "
             f"beta2 0.999, momentum decay 0.004 (every FDG stage stashes its weights, so no stage gets the "
             f"adaptive momentum). PipeMare: AdamW with stage k's rate divided by tau_k^(1 - min(t / T, 1)), "
             f"T = {a.pipemare_epochs:g} epochs of updates, tau_k = 2(K-1-k) - 1 for k < K-1 (5, 3, 1, 0 at "
             f"K = 4). mlp8: `mlp` with hidden (128,) x 7, 8 blocks, no BatchNorm (cnn1d has 4 blocks, too few "
             f"for K = 8).", "",
             "| optimizer | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    return lines + rows(acc, cols) + [
        "", "Test accuracy in % (mean ± std over seeds); in parentheses the difference to BP in points and, "
        "for the corrections, the share of FDG AdamW's gap to BP they close (negative: they widen it). "
        "1000 test samples: one sample is 0.1 point. BP is trained on one stage with AdamW."]


def sgd_table(a, acc: dict) -> list[str]:
    cols = [c[3] for c in COLUMNS]
    return ["", "## With SGD, where FDG collapses", "",
            f"SGD lr {a.lr:g}, momentum 0.9, weight decay {a.wd:g}, {a.epochs} epochs, the rest as above; "
            f"PipeMare T = {a.pipemare_epochs:g} epochs. The FDG row is plain SGD.", "",
            "| optimizer | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)] + rows(acc, cols) + [
            "", "In parentheses the difference to BP SGD and the share of plain FDG SGD's gap it closes."]


def rows(acc: dict, cols: list[str]) -> list[str]:
    lines, bp_row, base_row = [], ROWS[0][0], ROWS[1][0]
    for label, *_ in ROWS:
        cells = []
        for c in cols:
            bp = statistics.mean(acc[(bp_row, c)]) if label != bp_row else None
            base = statistics.mean(acc[(base_row, c)]) if label not in (bp_row, base_row) else None
            cells.append(cell(acc[(label, c)], bp, base))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
