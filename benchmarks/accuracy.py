"""Test accuracy of BP, DDG, FDG (beta 1 and 0.5) and ADL (M=2) at K = 2 and 3 on MNIST-1D.

Same seed(s), data, model and epochs for every row; writes a markdown table (default docs/accuracy.md).

    python benchmarks/accuracy.py [--seeds 0,1,2] [--epochs E] [--model M --lr LR] [--out FILE]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from torchdecoupled.config import RunConfig
from torchdecoupled.metrics import machine
from torchdecoupled.run import train

ROWS = [("bp", {}, "BP"), ("ddg", {}, "DDG"), ("fdg", {"beta": 1.0}, "FDG beta=1"),
        ("fdg", {"beta": 0.5}, "FDG beta=0.5"), ("adl", {"accumulate": 2}, "ADL M=2")]


def cell(accs: list[float], ref: float | None) -> str:
    m = 100 * statistics.mean(accs)
    s = f"{m:.1f}" + (f" ± {100 * statistics.stdev(accs):.1f}" if len(accs) > 1 else "")
    return s + (f" ({m - 100 * ref:+.1f})" if ref is not None else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="mnist1d")
    p.add_argument("--model")
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", default="0")
    p.add_argument("--stages", default="2,3")
    p.add_argument("--out", default="docs/accuracy.md")
    a = p.parse_args()
    ks, seeds = [int(k) for k in a.stages.split(",")], [int(s) for s in a.seeds.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    start, cfg = time.time(), None
    for name, opts, label in ROWS:
        for K in ([1] if name == "bp" else ks):
            for seed in seeds:
                cfg = RunConfig(method=name, method_opts=opts, stages=K, dataset=a.dataset, model=a.model,
                                lr=a.lr, epochs=a.epochs, seed=seed, progress=False).resolved()
                acc = train(cfg)["test_acc"]
                results.setdefault((label, K), []).append(acc)
                print(f"{label:<14} K={K} seed {seed}  test_acc {acc:.4f}", file=sys.stderr, flush=True)
    bp = statistics.mean(results[("BP", 1)])
    lines = [
        f"# Test accuracy on {a.dataset}: BP vs delayed-gradient methods", "",
        f"Model `{cfg.model}`, {cfg.epochs} epochs, batch {cfg.batch_size}, SGD lr {cfg.lr} momentum "
        f"{cfg.momentum} wd {cfg.weight_decay}, {cfg.lr_schedule} schedule, seeds {a.seeds}, simulator "
        "engine. BP is the same network trained on one stage (K does not change BP's math).", "",
        "| method | " + " | ".join(f"K={K}" for K in ks) + " |",
        "|---|" + "---|" * len(ks),
        "| BP | " + " | ".join(cell(results[("BP", 1)], None) for _ in ks) + " |",
    ]
    for _, _, label in ROWS[1:]:
        lines.append(f"| {label} | " + " | ".join(cell(results[(label, K)], bp) for K in ks) + " |")
    m = machine()
    lines += ["", "Test accuracy in % (mean ± std over seeds), difference of the mean to BP in points in "
              "parentheses. 1000 test samples: one sample is 0.1 point.", "",
              "Command: `" + " ".join(["python", "benchmarks/accuracy.py", *sys.argv[1:]]) + "`  ",
              f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, "
              f"commit {m['commit']}; total {time.time() - start:.0f} s.", ""]
    with open(a.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
