"""Page faults per tick and peak RSS of each FDG stage process (K = 2, ``--engine dist``'s own StageProcess),
tick by tick from the start: how soon a stage reaches its steady state, where it takes no page faults.

Fault counts (``ru_minflt``) do not depend on the machine's load, so one run of each model is enough. The
processes run exactly as in the speed benchmark (``torchdecoupled.bench``: same data, SGD, cut, one
thread per process, glibc kept from returning freed memory, ``engines/malloc.py``).

    python benchmarks/faults.py --doc docs/faults.md
    PYTHONPATH=/path/to/another/checkout python benchmarks/faults.py   # measure another version
"""
from __future__ import annotations

import argparse
import statistics
import time

import torchdecoupled
from torchdecoupled.bench import Job, run_job
from torchdecoupled.engines import dist_transport
from torchdecoupled.metrics import machine

CUTS = {"resnet20": (4,), "resnet56": (11,)}  # the speed benchmark's measured cuts (docs/speed.md)
WINDOW = range(4, 10)  # the speed benchmark's timing window at K = 2 (fill 2, warm-up 2, 6 steps)


def measure(model: str, ticks: int, batch: int) -> list[dict]:
    job = Job("fdg", model, batch=batch, stages=2, warmup=ticks - 2, steps=1, boundaries=CUTS[model])
    ranks = run_job(job)["ranks"]
    out = []
    for rank, rep in enumerate(ranks):
        faults = [b[3] - a[3] for a, b in zip(rep["marks"], rep["marks"][1:])]
        busy = [t for t, f in enumerate(faults) if f > 1000]
        out.append({"rank": rank, "faults": faults, "last_busy_tick": busy[-1] if busy else None,
                    "window_mean": statistics.fmean(faults[t] for t in WINDOW), "rss_mb": rep["rss_mb"]})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20,resnet56")
    p.add_argument("--ticks", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--doc", help="write the table as Markdown to this file")
    a = p.parse_args()
    m, t0 = machine(), time.perf_counter()
    windows = f"{dist_transport.PREFETCH} receives ahead, {dist_transport.MAX_OUTSTANDING} sends in flight"
    lines = [
        "# Page faults per tick of FDG's stage processes",
        "",
        f"Command: `python benchmarks/faults.py{' --doc ' + a.doc if a.doc else ''}`  ",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}; "
        f"torchdecoupled from {torchdecoupled.__file__.rsplit('/torchdecoupled/', 1)[0]}, commit {m['commit']}; "
        f"transport: {windows}.",
        "",
        f"K = 2, batch {a.batch}, CIFAR-shaped synthetic data, one thread per process. Minor page faults per "
        f"tick (thousands, rounded), every tick of the run; 'last > 1k': the last tick with more than 1,000; "
        f"'window': mean faults per tick over ticks {WINDOW.start}-{WINDOW.stop - 1} (the speed benchmark's "
        "timing window); peak RSS (VmHWM, the torch library included).",
        "",
        "| model | stage | faults per tick (k) | last > 1k | window | peak RSS, MB |",
        "|---|---|---|---:|---:|---:|",
    ]
    for model in a.model.split(","):
        for r in measure(model, a.ticks, a.batch):
            series = " ".join(str(round(f / 1000)) for f in r["faults"])
            lines.append(f"| {model} | {r['rank']} | {series} | {r['last_busy_tick']} | "
                         f"{r['window_mean']:.0f} | {r['rss_mb']:.0f} |")
            print(lines[-1], flush=True)
    lines += ["", f"{time.perf_counter() - t0:.0f} s.", ""]
    if a.doc:
        with open(a.doc, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
