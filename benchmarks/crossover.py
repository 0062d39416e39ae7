"""Where decoupling starts to pay on this machine: FDG with K = 2 (2 processes x 1 thread) against BP with one
thread, from the MNIST-1D CNN up to ResNet-20 at batch 128, through the speed benchmark's own harness
(``torchdecoupled.bench.bench_model``: the same processes, clocks and interleaved medians). A small model's
tick is short, and every tick pays the same fixed costs (a gloo message each way, posted and waited in the
main thread and moved by gloo's own thread; the engine's Python per action), so below some compute per tick
one process is faster than two.

    python benchmarks/crossover.py [--repeats 3] [--doc docs/speed.md]

Synthetic inputs of each model's shape (speed only). Writes the section "## Small models: where decoupling
starts to pay" of ``--doc``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from torchdecoupled.bench import bench_model
from torchdecoupled.metrics import machine

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead_report import write_doc  # noqa: E402

MARK = "## Small models: where decoupling starts to pay"
POINTS = [("cnn1d_bn", (1, 40), 50), ("cnn1d_bn", (1, 40), 400), ("resnet20", (3, 32, 32), 1),
          ("resnet20", (3, 32, 32), 4), ("resnet20", (3, 32, 32), 8),
          ("resnet20", (3, 32, 32), 16), ("resnet20", (3, 32, 32), 32), ("resnet20", (3, 32, 32), 128)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--doc", help="write the section into this Markdown file (e.g. docs/speed.md)")
    a = p.parse_args()
    t0, rows = time.time(), []
    for model, shape, batch in POINTS:
        r = bench_model(model, ["bp_1thread", "fdg"], batch=batch, in_shape=shape, warmup=a.warmup, steps=a.steps,
                        repeats=a.repeats, log=lambda m: print(m, file=sys.stderr, flush=True))
        bp, fdg = r["best"]["bp_1thread"], r["best"]["fdg"]
        row = {"model": model, "batch": batch, "bp_ms": bp["ranks"][0]["step_ms"], "bp_cpu": bp["ranks"][0]["main_cpu_ms"],
               "fdg_ms": max(rk["step_ms"] for rk in fdg["ranks"]),
               "stage_cpu": [rk["main_cpu_ms"] for rk in fdg["ranks"]],
               "wait": [rk.get("wait_ms", 0.0) for rk in fdg["ranks"]],
               "other": [rk["other_cpu_ms"] for rk in fdg["ranks"]],
               "ratio": r["per_s"]["fdg"] / r["per_s"]["bp_1thread"], "cut": r["cuts"]["stash"]["boundaries"]}
        rows.append(row)
        print(f"{model} batch {batch}: BP {row['bp_ms']:.2f} ms/step, FDG {row['fdg_ms']:.2f} ms/tick, "
              f"FDG / BP {row['ratio']:.2f}", flush=True)
    m = machine()
    lines = [MARK, "", f"    python benchmarks/crossover.py {' '.join(sys.argv[1:])}".rstrip(), "",
             f"Machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, commit {m['commit']}; load average "
             f"{os.getloadavg()[0]:.1f} at the end; {time.time() - t0:.0f} s. FDG, K = 2, cut by measured layer "
             f"times, against BP with one thread; medians of {a.repeats} interleaved runs of {a.steps} steps after "
             f"{a.warmup} (the speed benchmark's harness, synthetic inputs of each model's shape).", "",
             "| model | batch | BP ms/step | FDG ms/tick | FDG / BP (images/s) | stage CPU ms/tick | the stages' CPU "
             "- BP's | other threads' CPU ms/tick | blocked on messages ms/tick |", "|---|---:|---:|---:|---:|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['bp_ms']:.2f} | {r['fdg_ms']:.2f} | **{r['ratio']:.2f}x** | "
                     f"{' / '.join(f'{c:.2f}' for c in r['stage_cpu'])} | {sum(r['stage_cpu']) - r['bp_cpu']:+.2f} | "
                     f"{' / '.join(f'{o:.2f}' for o in r['other'])} | {' / '.join(f'{w:.2f}' for w in r['wait'])} |")
    pays = [r for r in rows if r["ratio"] > 1]
    loses = [r for r in rows if r["ratio"] <= 1]
    if pays and loses:
        lines += ["", f"FDG is faster than BP here from a BP step of {min(r['bp_ms'] for r in pays):.1f} ms up and "
                  f"slower at {max(r['bp_ms'] for r in loses):.1f} ms and below."]
    elif pays:
        lines += ["", f"FDG is faster than BP at every size measured, down to a BP step of "
                  f"{min(r['bp_ms'] for r in rows):.1f} ms."]
    else:
        lines += ["", "FDG is slower than BP at every size measured."]
    extra = [sum(r["stage_cpu"]) - r["bp_cpu"] for r in rows]
    big = max(range(len(rows)), key=lambda i: rows[i]["bp_cpu"])
    fixed = min(extra)
    lines += ["", f"The stages' CPU - BP's is what splitting the model over two processes adds per batch: from "
              f"{fixed:.1f} ms on the smallest model to {extra[big]:.1f} ms on the largest, i.e. about {fixed:.1f} ms "
              f"per tick that every model pays (the engine's actions, two messages each way, the data feed, the "
              f"checks) plus about {100 * (extra[big] - fixed) / rows[big]['bp_cpu']:.0f} % of the model's own "
              f"compute (two processes sharing the cores and caches, the messages' copies). On top of it, each "
              f"process's other threads (gloo's TCP loop, which moves the messages) take "
              f"{statistics.fmean(rows[0]['other']):.2f} ms of CPU per tick on the smallest model from the same two "
              f"cores. With 2 cores for 2 stages the split pays once a BP step is a few times the fixed part.", ""]
    print("\n".join(lines))
    if a.doc:
        write_doc(a.doc, lines, MARK)


if __name__ == "__main__":
    main()
