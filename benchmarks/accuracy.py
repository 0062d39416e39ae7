"""Test accuracy of BP, DDG, FDG (beta 1 and 0.5) and ADL (M=2) at K = 2 and 3 on MNIST-1D.

Same seed, data, model and epochs for every row; writes docs/accuracy.md.

    python benchmarks/accuracy.py [--epochs E] [--seed S] [--out docs/accuracy.md]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from torchdecoupled.config import RunConfig
from torchdecoupled.metrics import machine
from torchdecoupled.train import train

ROWS = [("bp", {}, "BP"), ("ddg", {}, "DDG"), ("fdg", {"beta": 1.0}, "FDG beta=1"),
        ("fdg", {"beta": 0.5}, "FDG beta=0.5"), ("adl", {"accumulate": 2}, "ADL M=2")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="mnist1d")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default="2,3")
    p.add_argument("--out", default="docs/accuracy.md")
    a = p.parse_args()
    ks = [int(k) for k in a.stages.split(",")]
    results, cfg = {}, None
    start = time.time()
    for name, opts, label in ROWS:
        for K in ([1] if name == "bp" else ks):
            cfg = RunConfig(method=name, method_opts=opts, stages=K, dataset=a.dataset, epochs=a.epochs,
                            seed=a.seed, progress=False).resolved()
            s = train(cfg)
            results[(label, K)] = s["test_acc"]
            print(f"{label:<14} K={K}  test_acc {s['test_acc']:.4f}  ({s['time_s']:.0f} s)", file=sys.stderr)
    bp = results[("BP", 1)]
    lines = [
        f"# Test accuracy on {a.dataset}: BP vs delayed-gradient methods", "",
        f"Model `{cfg.model}`, {cfg.epochs} epochs, batch {cfg.batch_size}, SGD lr {cfg.lr} momentum "
        f"{cfg.momentum} wd {cfg.weight_decay}, {cfg.lr_schedule} schedule, seed {a.seed}, simulator engine. "
        "BP is the same network on one stage (K does not change BP's math).", "",
        "| method | " + " | ".join(f"K={K}" for K in ks) + " |",
        "|---|" + "---|" * len(ks),
        f"| BP | " + " | ".join(f"{100 * bp:.1f}" for _ in ks) + " |",
    ]
    for _, _, label in ROWS[1:]:
        cells = [f"{100 * results[(label, K)]:.1f} ({100 * (results[(label, K)] - bp):+.1f})" for K in ks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    m = machine()
    lines += ["", "Test accuracy in %, difference to BP in points in parentheses.", "",
              f"Command: `python benchmarks/accuracy.py {' '.join(sys.argv[1:])}`".replace(" `", "`", 0),
              f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, "
              f"commit {m['commit']}; total {time.time() - start:.0f} s.", ""]
    with open(a.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps({f"{k[0]} K={k[1]}": v for k, v in results.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
