"""MAN as K grows: DGL and InfoPro with and without the momentum auxiliary network, against BP.

Su et al., "Momentum Auxiliary Network for Supervised Local Learning", ECCV 2024: MAN's aux input is
LB(h) + EMA(h), copies of the next stage's first layer (``heads/man.py``). MNIST-1D with ``resnet1d_32`` at
K = 4, 8, 16, partition "uniform", the simulator, one thread, SGD momentum 0.9, cosine schedule; BP is the same
network on one stage. FLOPs (``torchdecoupled.heads.flops``: matrix products and convolutions, forward +
backward) per sample at the training batch size, for every stage k < K-1 and its head. Writes docs/man.md.

    python benchmarks/man.py [--seeds 0,1] [--epochs 3] [--heads dgl,infopro,man_dgl,man_infopro]
                             [--out docs/man.md] [--accuracies LOG]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import local_heads  # noqa: E402
from local_heads import cell, footer  # noqa: E402  (the same table cells and provenance lines)
from torchdecoupled.config import RunConfig  # noqa: E402
from torchdecoupled.metrics import machine

# (label, method, head): each MAN row next to the method whose head it wraps
METHODS = [("DGL", "dgl", "dgl"), ("MAN (DGL head)", "man", "man_dgl"), ("InfoPro", "infopro", "infopro"),
           ("MAN (InfoPro head)", "man", "man_infopro")]
PAIRS = [("DGL", "MAN (DGL head)"), ("InfoPro", "MAN (InfoPro head)")]
DATASET, MODEL, KS, BS, LR = "mnist1d", "resnet1d_32", (4, 8, 16), 128, 0.05


def run(label, method, head, K, epochs, seed) -> float:
    from torchdecoupled.run import train
    opts = {"head": head} if method in ("dgl", "man") else {}
    cfg = RunConfig(method=method, stages=K, dataset=DATASET, model=MODEL, epochs=epochs, batch_size=BS, lr=LR,
                    partition="uniform", seed=seed, progress=False, threads=1, method_opts=opts)
    acc = train(cfg)["test_acc"]
    print(f"RUN\t{label}\t{K}\t{seed}\t{acc:.4f}", file=sys.stderr, flush=True)
    return acc


def stage_ratios(K: int) -> list[dict]:
    """Per stage k < K-1: its FLOPs per sample and each head's FLOPs per sample."""
    return local_heads.stage_ratios(DATASET, MODEL, K, BS, heads=[(label, head) for label, _, head in METHODS])


def verdict(gaps: dict[str, list[float]]) -> tuple[str, str]:
    """The claim holds for a pair (base, MAN) when MAN's loss to BP at the largest K is smaller than the base's
    and grew less from the smallest K; it holds when it holds for every pair run, partly for some."""
    ok = [gaps[m][-1] < gaps[b][-1] and gaps[m][-1] - gaps[m][0] < gaps[b][-1] - gaps[b][0] for b, m in PAIRS
          if b in gaps and m in gaps]
    word = "not testable (no pair)" if not ok else "holds" if all(ok) else "partly holds" if any(ok) else "does not hold"
    at = ", ".join(f"{n} {g[-1]:.1f}" for n, g in gaps.items())
    grew = ", ".join(f"{n} {g[-1] - g[0]:+.1f}" for n, g in gaps.items())
    return word, f"losses to BP at K = {KS[-1]}: {at} points; change from K = {KS[0]}: {grew}"


def accuracy_lines(results) -> list[str]:
    bp = results[("BP", 1)]
    ref = statistics.mean(bp)
    lines = ["| method | " + " | ".join(f"K={K}" for K in KS) + " |", "|---|" + "---|" * len(KS),
             "| BP | " + " | ".join(cell(bp, None) for _ in KS) + " |"]
    gaps = {}
    for label, _, _ in METHODS:
        if (label, KS[0]) not in results:
            continue
        accs = [results[(label, K)] for K in KS]
        lines.append(f"| {label} | " + " | ".join(cell(a, ref) for a in accs) + " |")
        gaps[label] = [100 * (ref - statistics.mean(a)) for a in accs]
    word, why = verdict(gaps)
    return lines + ["", f"Claim (MAN loses less accuracy as K grows): **{word}** here ({why}).", ""]


def flops_lines(K: int, rows: list[dict]) -> list[str]:
    total = sum(r["stage"] for r in rows)
    labels = [label for label, _, _ in METHODS]
    lines = [f"#### K = {K}", "", "| stage | stage MFLOPs | " + " | ".join(labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    for r in rows:
        lines.append(f"| {r['k']} | {r['stage'] / 1e6:.3f} | " + " | ".join(f"{r[n] / r['stage']:.2f}x"
                                                                             for n in labels) + " |")
    lines.append(f"| all heads / stages 0..K-2 | {total / 1e6:.3f} | " + " | ".join(
        f"{sum(r[n] for r in rows) / total:.2f}x" for n in labels) + " |")
    return lines + [""]


def read_log(path: str) -> dict[tuple, list[float]]:
    results: dict[tuple, list[float]] = {}
    for line in open(path):
        w = line.rstrip("\n").split("\t")
        if len(w) == 5 and w[0] == "RUN":
            results.setdefault((w[1], int(w[2])), []).append(float(w[4]))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--heads", default="dgl,infopro,man_dgl,man_infopro", help="the rows to train (FLOPs: all)")
    p.add_argument("--out", default="docs/man.md")
    p.add_argument("--accuracies", metavar="LOG", help="take the accuracies from the RUN lines an earlier run "
                   "printed (its stderr) instead of training; the FLOPs are counted again")
    a = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in a.seeds.split(",")]
    start, cpu = time.time(), time.process_time()
    flops = {K: stage_ratios(K) for K in KS}
    results: dict[tuple, list[float]] = read_log(a.accuracies) if a.accuracies else {}
    for seed in ([] if a.accuracies else seeds):
        results.setdefault(("BP", 1), []).append(run("BP", "bp", None, 1, a.epochs, seed))
        for K in KS:
            for label, method, head in [r for r in METHODS if r[2] in a.heads.split(",")]:
                results.setdefault((label, K), []).append(run(label, method, head, K, a.epochs, seed))
    write(a, results, flops, time.time() - start, time.process_time() - cpu)


def write(a, results, flops, wall, cpu) -> None:
    m = machine()
    lines = ["# MAN as K grows: DGL and InfoPro with the momentum auxiliary network", "",
             "MAN (Su et al., ECCV 2024) feeds each stage's auxiliary head y = LB(h) + EMA(h): EMA is a moving "
             "average (m = 0.995) of the next stage's first layer, whose parameters travel down after every "
             "update, and LB a trainable copy of that layer. The head on y is DGL's or InfoPro's (docs/methods.md).",
             "", f"Every run: MNIST-1D, `{MODEL}`, the simulator, one thread, partition `uniform`, SGD lr {LR} "
             f"momentum 0.9 wd 5e-4, cosine schedule, {a.epochs} epochs at batch {BS}; seeds {a.seeds}. These are "
             f"short runs chosen to fit a budget of 15 minutes of one core: the accuracies are below what longer "
             f"training reaches, and the comparison is between methods trained equally briefly.", "",
             "## Test accuracy", "",
             "Test accuracy in % (mean ± std over seeds), difference of the mean to BP in points in parentheses. "
             "MNIST-1D has 1000 test samples (0.1 point each); with two seeds, differences of about a point or "
             "less are within the spread between seeds. The verdict: for each pair (DGL, MAN with DGL's head) and "
             "(InfoPro, MAN with InfoPro's head) the claim holds when MAN's loss to BP at K = 16 is smaller and "
             "grew less from K = 4; holds when both pairs do, partly when one does.", ""]
    lines += accuracy_lines(results)
    lines += ["## Extra FLOPs of the heads", "",
              "Per sample, one forward + backward of stage k and of its head's loss, counted by `torch.utils."
              "flop_counter.FlopCounterMode` at the training batch size: matrix products and convolutions only. "
              "A head's column is its FLOPs divided by its stage's; MAN's include the two copies of the next "
              "stage's first layer (LB with its parameter gradients, EMA with dL/dh only). The EMA update itself, "
              "3 FLOPs per parameter of that layer per step, is not counted.", ""]
    for K in KS:
        lines += flops_lines(K, flops[K])
    lines += ["Per-run test accuracies:", "", "```"]
    for (label, K), accs in results.items():
        lines += [f"{label:20} K={K:<2} seed {s}  test_acc {acc:.4f}" for s, acc in zip(a.seeds.split(","), accs)]
    lines += ["```", ""] + footer("benchmarks/man.py", m, cpu, wall, a.accuracies)
    with open(a.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
