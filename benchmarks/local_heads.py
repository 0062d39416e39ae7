"""Local learning's heads as K grows: DGL vs InfoPro vs AugLocal vs BP, and each head's extra FLOPs.

MNIST-1D with resnet1d_32 at K = 4, 8, 16; digits with cnn2d at K = 4 (it has 4 children, so K = 8
cannot be cut) and with the CIFAR ResNet-20 (11 children) at K = 4, 8. Every run: the simulator, one
thread, partition "uniform" (about equal numbers of blocks per stage), SGD momentum 0.9, cosine schedule.
FLOPs (``torchdecoupled.heads.flops``: matrix products and convolutions, forward + backward) per sample,
at the training batch size, for every stage k < K-1 and its head. Writes docs/local_heads.md.

    python benchmarks/local_heads.py [--seeds 0,1] [--epochs-mnist1d 8] [--epochs-digits 10] [--out FILE]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from torchdecoupled.config import RunConfig
from torchdecoupled.data import load_dataset
from torchdecoupled.heads import stage_head
from torchdecoupled.heads.flops import head_flops, module_flops
from torchdecoupled.metrics import machine
from torchdecoupled.models import build_model
from torchdecoupled.partition import split
from torchdecoupled.run import train

METHODS = [("dgl", "DGL"), ("infopro", "InfoPro"), ("auglocal", "AugLocal")]
# (dataset, model, stages, batch size, learning rate)
SETTINGS = [("mnist1d", "resnet1d_32", (4, 8, 16), 128, 0.05), ("digits", "cnn2d", (4,), 64, 0.05),
            ("digits", "resnet20", (4, 8), 64, 0.05)]


def run(dataset, model, method, K, bs, lr, epochs, seed) -> float:
    cfg = RunConfig(method=method, stages=K, dataset=dataset, model=model, epochs=epochs, batch_size=bs, lr=lr,
                    partition="uniform", seed=seed, progress=False, threads=1)
    acc = train(cfg)["test_acc"]
    print(f"{dataset:8} {model:12} {method:9} K={K:<2} seed {seed}  test_acc {acc:.4f}", file=sys.stderr, flush=True)
    return acc


def stage_ratios(dataset, model_name, K, bs, heads=None) -> list[dict]:
    """Per stage k < K-1: its FLOPs per sample and each head's FLOPs per sample; ``heads``: (key, head name)
    pairs (default: this script's methods, each its own head)."""
    data = load_dataset(dataset)
    torch.manual_seed(0)
    model = build_model(model_name, data.num_classes, data.in_shape)
    stages = split(model, K, balance="uniform")
    x0, y = data.train_x[:bs], data.train_y[:bs]
    rows, x = [], x0
    for k in range(K - 1):
        stage = {"k": k, "stage": module_flops(stages[k], x)}
        with torch.no_grad():
            h = stages[k].eval()(x)
        stages[k].train()
        for key, name in heads or [(m, m) for m, _ in METHODS]:
            stage[key] = head_flops(stage_head(name, stages, k, x0, data.num_classes, seed=0), h, y, x0)
        rows.append(stage)
        x = h
    return rows


def cell(accs: list[float], ref: float | None) -> str:
    m = 100 * statistics.mean(accs)
    s = f"{m:.1f}" + (f" ± {100 * statistics.stdev(accs):.1f}" if len(accs) > 1 else "")
    return s + (f" ({m - 100 * ref:+.1f})" if ref is not None else "")


def verdict(gaps: dict[str, list[float]], Ks) -> tuple[str, str]:
    """gaps[method][i]: BP minus the method's mean accuracy (points) at Ks[i]. The claim holds when AugLocal's
    loss at the largest K is the smallest of the three and grew least from the smallest K to the largest;
    partly when one of the two is true. With one K there is no growth to compare."""
    names = {m: label for m, label in METHODS}
    at = ", ".join(f"{names[m]} {g[-1]:.1f}" for m, g in gaps.items())
    if len(Ks) == 1:
        return "not testable (one K)", f"losses to BP at K = {Ks[0]}: {at} points"
    aug = gaps["auglocal"]
    smallest = all(aug[-1] < gaps[m][-1] for m in ("dgl", "infopro"))
    growth = all(aug[-1] - aug[0] < gaps[m][-1] - gaps[m][0] for m in ("dgl", "infopro"))
    word = "holds" if smallest and growth else ("partly holds" if smallest or growth else "does not hold")
    grew = ", ".join(f"{names[m]} {g[-1] - g[0]:+.1f}" for m, g in gaps.items())
    return word, f"losses to BP at K = {Ks[-1]}: {at} points; change from K = {Ks[0]}: {grew}"


def accuracy_section(dataset, model, Ks, results, seeds) -> list[str]:
    bp = results[(dataset, model, "bp", 1)]
    ref = statistics.mean(bp)
    lines = [f"### {dataset}, `{model}`", "", "| method | " + " | ".join(f"K={K}" for K in Ks) + " |",
             "|---|" + "---|" * len(Ks), "| BP | " + " | ".join(cell(bp, None) for _ in Ks) + " |"]
    gaps = {}
    for method, label in METHODS:
        accs = [results[(dataset, model, method, K)] for K in Ks]
        lines.append(f"| {label} | " + " | ".join(cell(a, ref) for a in accs) + " |")
        gaps[method] = [100 * (ref - statistics.mean(a)) for a in accs]
    word, why = verdict(gaps, Ks)
    return lines + ["", f"Claim (the new heads lose less accuracy as K grows): **{word}** here ({why}).", ""]


def flops_section(dataset, model, K, rows) -> list[str]:
    total = sum(r["stage"] for r in rows)
    lines = [f"#### {dataset}, `{model}`, K = {K}", "",
             "| stage | stage MFLOPs | DGL head | InfoPro head | AugLocal head |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['stage'] / 1e6:.3f} | " + " | ".join(
            f"{r[m] / r['stage']:.2f}x" for m, _ in METHODS) + " |")
    lines.append(f"| all heads / stages 0..K-2 | {total / 1e6:.3f} | " + " | ".join(
        f"{sum(r[m] for r in rows) / total:.2f}x" for m, _ in METHODS) + " |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs-mnist1d", type=int, default=8)
    p.add_argument("--epochs-digits", type=int, default=10)
    p.add_argument("--out", default="docs/local_heads.md")
    p.add_argument("--accuracies", metavar="LOG", help="take the accuracies from the per-run lines that an earlier "
                   "run printed (its stderr) instead of training; the FLOPs are counted again")
    a = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in a.seeds.split(",")]
    epochs = {"mnist1d": a.epochs_mnist1d, "digits": a.epochs_digits}
    start, cpu = time.time(), time.process_time()
    results: dict[tuple, list[float]] = {}
    flops: dict[tuple, list[dict]] = {}
    for dataset, model, Ks, bs, lr in SETTINGS:
        for K in Ks:
            flops[(dataset, model, K)] = stage_ratios(dataset, model, K, bs)
        for seed in ([] if a.accuracies else seeds):
            for method, K in [("bp", 1)] + [(m, K) for m, _ in METHODS for K in Ks]:
                acc = run(dataset, model, method, K, bs, lr, epochs[dataset], seed)
                results.setdefault((dataset, model, method, K), []).append(acc)
    runs, cost = (read_log(a.accuracies) if a.accuracies else (None, None))
    results = runs or results
    write(a, seeds, epochs, results, flops, time.time() - start, time.process_time() - cpu, cost)


def read_log(path: str) -> tuple[dict[tuple, list[float]], str | None]:
    """The accuracies of the lines ``run`` prints (dataset model method K=k seed s test_acc a), and the
    cost of that training run (its "Training run:" or "Machine:" line), from a log or an earlier output."""
    results: dict[tuple, list[float]] = {}
    cost = None
    for line in open(path):
        w = line.split()
        if len(w) == 8 and w[3].startswith("K=") and w[6] == "test_acc":
            results.setdefault((w[0], w[1], w[2], int(w[3][2:])), []).append(float(w[7]))
        elif line.startswith(("Machine:", "Training run")) and cost is None:
            cost = line.split(":", 1)[1].strip()
    return results, cost


def write(a, seeds, epochs, results, flops, wall, cpu, cost=None) -> None:
    m = machine()
    lines = ["# Local learning's heads as K grows: DGL, InfoPro, AugLocal", "",
             "Test accuracy of the local-learning methods against BP, and what each auxiliary head costs. "
             "AugLocal (Ma et al., ICLR 2024) builds each stage's auxiliary network from fresh copies of a "
             "uniform sample of the layers above it (depth d = 3, pyramid coefficient 0.5, as the reference "
             "runs); DGL's head is its MLP-SR-aux, InfoPro's is reconstruction + SupCon (docs/methods.md).", "",
             f"Every run: the simulator, one thread, partition `uniform`, SGD lr 0.05 momentum 0.9 wd 5e-4, "
             f"cosine schedule; MNIST-1D {epochs['mnist1d']} epochs at batch 128, digits {epochs['digits']} epochs "
             f"at batch 64; seeds {a.seeds}. These are short runs chosen to fit a budget of 20 minutes of one "
             f"core: the accuracies are below what longer training reaches, and the comparison is between methods "
             f"trained equally briefly. BP is the same network on one stage. `cnn2d` has 4 children, so digits "
             f"at K = 8 uses the CIFAR ResNet-20 (`resnet20`, 11 children) on the 1x8x8 images.", "",
             "## Test accuracy", "",
             "Test accuracy in % (mean ± std over seeds), difference of the mean to BP in points in parentheses. "
             "MNIST-1D has 1000 test samples (0.1 point each), digits 359 (0.28 point each). With two seeds, "
             "differences of about a point or less are within the spread between seeds. The claim's verdict: "
             "holds when AugLocal's loss to BP at the largest K is the smallest of the three and grew least from "
             "the smallest K; partly when one of the two is true.", ""]
    for dataset, model, Ks, _, _ in SETTINGS:
        lines += accuracy_section(dataset, model, Ks, results, seeds)
    lines += ["## Extra FLOPs of the heads", "",
              "Per sample, one forward + backward of stage k (parameter and input gradients) and of its head's "
              "loss (the head's parameter gradients and dL/dh), counted by `torch.utils.flop_counter."
              "FlopCounterMode` at the training batch size (SupCon's cost per sample grows with the batch): "
              "matrix products and convolutions only, so BatchNorm, activations and pooling count 0. A head's "
              "column is its FLOPs divided by its stage's; the last row divides the sum over all heads by the "
              "sum over stages 0..K-2. The last stage (no head) is left out.", ""]
    for dataset, model, Ks, _, _ in SETTINGS:
        for K in Ks:
            lines += flops_section(dataset, model, K, flops[(dataset, model, K)])
    lines += ["Per-run test accuracies:", "", "```"]
    for (dataset, model, method, K), accs in results.items():
        lines += [f"{dataset:8} {model:12} {method:9} K={K:<2} seed {seed}  test_acc {acc:.4f}"
                  for seed, acc in zip(seeds, accs)]
    lines += ["```", ""]
    if cost:
        lines += [f"Training run (`python benchmarks/local_heads.py`, the defaults): {cost}", ""]
    lines += footer("benchmarks/local_heads.py", m, cpu, wall, a.accuracies)
    with open(a.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def footer(script: str, m: dict, cpu: float, wall: float, from_log) -> list[str]:
    """The command and machine lines under a report."""
    return ["Command: `" + " ".join(["python", script, *sys.argv[1:]]) + "`  ",
            f"Machine: {m['platform']}, {m['cpus']} CPUs (shared with other work), Python {m['python']}, "
            f"torch {m['torch']}, commit {m['commit']}; {cpu:.0f} s of CPU, {wall:.0f} s wall"
            + (" (FLOPs only; the accuracies are from the log)." if from_log else "."), ""]


if __name__ == "__main__":
    main()
