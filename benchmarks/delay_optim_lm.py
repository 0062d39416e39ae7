"""The delay-aware optimizers on a GPT: BP, FDG with AdamW, FDG with nag-async, FDG with PipeMare's correction.

``gpt_mini`` on the bundled text, the text recipe (AdamW lr 3e-3, warm-up + cosine per update, one epoch),
the simulator, at K = 4 and 8; appends a section to docs/delay_optim.md. The runs are benchmarks/lm.py's
(``one``), so BP and FDG with AdamW are read from its results file when it holds them.

    python benchmarks/delay_optim_lm.py [--seeds 0] [--stages 4,8] [--pipemare-epochs 0.5] [--workers 2]
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lm import load_results, one  # noqa: E402  (benchmarks/lm.py: the same runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0")
    p.add_argument("--stages", default="4,8")
    p.add_argument("--pipemare-epochs", type=float, default=0.5, help="T of PipeMare's correction, in epochs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--results", default="docs/lm_runs.jsonl")
    p.add_argument("--out", default="docs/delay_optim.md")
    a = p.parse_args()
    ks, seeds = [int(k) for k in a.stages.split(",")], [int(s) for s in a.seeds.split(",")]
    have, _ = load_results(a.results, 1, "float32")
    rows = {"FDG nag-async": {"optimizer": "nag-async"},
            "FDG AdamW + PipeMare": {"lr_correction": f"pipemare {a.pipemare_epochs:g}"}}
    jobs = [(label, "fdg", {"beta": 1.0}, K, s, 1, "float32", extra) for label, extra in rows.items()
            for K in ks for s in seeds]
    start, got = time.time(), {}
    with futures.ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for job, r in zip(jobs, pool.map(one, jobs)):
            got[(job[0], job[3], job[4])] = r["bpb"]
            print(f"{job[0]} K={job[3]} seed {job[4]}: bpb {r['bpb']:.4f}", file=sys.stderr, flush=True)
    bp = statistics.mean(have[("BP", 1, s)]["bpb"] for s in seeds)
    base = {K: statistics.mean(have[("FDG beta=1", K, s)]["bpb"] for s in seeds) for K in ks}
    from torchdecoupled.metrics import machine
    mach = machine()
    lines = ["", "## On a GPT: gpt_mini on the bundled text", "",
             f"Validation bits per byte (lower is better), seeds {a.seeds}, one epoch, the text recipe (AdamW lr 3e-3, "
             f"weight decay 5e-4, warm-up + cosine per update), simulator; PipeMare's T = {a.pipemare_epochs:g} "
             f"epoch(s). BP and FDG with AdamW are the runs of docs/lm.md. In brackets: the share of FDG's gap to BP "
             f"that the optimizer closes (negative: it widens it).", "",
             "| method | " + " | ".join(f"K={K}" for K in ks) + " |", "|---|" + "---|" * len(ks),
             "| BP | " + " | ".join(f"{bp:.3f}" for _ in ks) + " |",
             "| FDG AdamW | " + " | ".join(f"{base[K]:.3f}" for K in ks) + " |"]
    for label in rows:
        cells = []
        for K in ks:
            v = statistics.mean(got[(label, K, s)] for s in seeds)
            gap = base[K] - bp
            cells.append(f"{v:.3f} ({(base[K] - v) / gap:+.0%})" if abs(gap) > 1e-9 else f"{v:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `python benchmarks/delay_optim_lm.py --seeds {a.seeds} --stages {a.stages} "
                  f"--pipemare-epochs {a.pipemare_epochs:g}`; {time.time() - start:.0f} s with {a.workers} at once. "
                  f"Machine: {mach['platform']}, {mach['cpus']} CPUs, torch {mach['torch']}, commit {mach['commit']}.",
              ""]
    with open(a.out, "a") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
