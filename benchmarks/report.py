"""`make bench`: one report, BENCHMARKS.md, with its figures under docs/: speed (the speed benchmark, every
contender side by side in one run), memory (docs/memory.md), accuracy (docs/accuracy*.md, docs/lm.md when
it exists), and each of the papers' claims marked holds / does not hold here.

Quick mode (the default, `make bench`; under 5 minutes on a quiet 2-core machine): the speed run on
ResNet-20 and gpt_mini, 2 interleaved repeats of 2 steps, 4 micro-batches for every pipelining schedule;
memory and accuracy are quoted from the docs files that hold them. Full mode (`--full`, `make bench
FULL=1`; about half an hour): ResNet-20, ResNet-56 and gpt_mini, 5 repeats of 8 steps, the best of 2, 4, 8
micro-batches; benchmarks/memory.py and benchmarks/accuracy.py (3 seeds) rerun, rewriting docs/memory.md
and docs/accuracy.md; the other tables quoted.

    python benchmarks/report.py                 # quick: BENCHMARKS.md, docs/bench_*.png, docs/bench_speed.json
    python benchmarks/report.py --full          # about half an hour
    python benchmarks/report.py --speed-from docs/bench_speed.json   # measure nothing: render again
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from torchdecoupled.bench import CONTENDERS, BenchError, bench_model
from torchdecoupled.bench import plots, summary
from torchdecoupled.bench.docs_tables import by_label, memory_rows, read
from torchdecoupled.metrics import machine

MODES = {
    "quick": dict(models=("resnet20", "gpt_mini"), repeats=2, warmup=1, steps=2, microbatches=(4,), rerun=()),
    "full": dict(models=("resnet20", "resnet56", "gpt_mini"), repeats=5, warmup=4, steps=8, microbatches=(2, 4, 8),
                 rerun=("memory", "accuracy")),
}
MODE_WORDS = {
    "quick": "speed re-measured: ResNet-20 and gpt_mini, 2 interleaved repeats of 2 steps, 4 micro-batches for "
             "every pipelining schedule; memory and accuracy quoted from docs/",
    "full": "speed re-measured: ResNet-20, ResNet-56 and gpt_mini, 5 interleaved repeats of 8 steps, the best of "
            "2, 4, 8 micro-batches per schedule; memory (benchmarks/memory.py) and MNIST-1D accuracy "
            "(benchmarks/accuracy.py, 3 seeds) re-measured; the other accuracy tables quoted",
}
RERUN = {"memory": ["benchmarks/memory.py", "--doc", "docs/memory.md"],
         "accuracy": ["benchmarks/accuracy.py", "--seeds", "0,1,2", "--out", "docs/accuracy.md"]}
FIGURES = {"speed": "docs/bench_speed.png", "memory": "docs/bench_memory.png", "accuracy": "docs/bench_accuracy.png"}
SPEED_JSON = "docs/bench_speed.json"


def _failed_contender(error: str, contenders: list[str]) -> str | None:
    """The pipelining contender a BenchError names ("pipelining_x/m4 rank 1: ..."), if any."""
    return next((c for c in contenders if c.startswith("pipelining_") and error.startswith((c + "/", c + " "))), None)


def measure_speed(mode: str, log, bench=bench_model) -> dict:
    """The speed benchmark on the mode's models, every contender; a pipelining schedule that fails is
    left out (its exact error kept for the report) and the model measured again without it."""
    s, failed, results = MODES[mode], {}, []
    t0, load0 = time.perf_counter(), os.getloadavg()
    for model in s["models"]:
        contenders = [c for c in CONTENDERS if c not in failed]
        while True:
            try:
                results.append(bench(model, contenders, repeats=s["repeats"], warmup=s["warmup"], steps=s["steps"],
                                     microbatches=s["microbatches"], log=log))
                break
            except BenchError as e:
                c = _failed_contender(str(e), contenders)
                if c is None:
                    raise
                log(f"{c} does not run: {e}")
                failed[c] = str(e)
                contenders.remove(c)
    meta = {"machine": machine(), "stages": 2, "batch": None, "repeats": s["repeats"], "warmup": s["warmup"],
            "steps": s["steps"], "microbatches": ",".join(map(str, s["microbatches"])), "partition": "time",
            "malloc": "all", "select": "pilot", "loadavg_before": load0, "loadavg_after": os.getloadavg(),
            "elapsed_s": round(time.perf_counter() - t0, 1), "failed": failed,
            "command": f"python benchmarks/report.py{' --full' if mode == 'full' else ''} (the speed part)"}
    return {"meta": meta, "results": results}


def rerun(name: str, root: str, log) -> None:
    log(f"rerunning {' '.join(RERUN[name])}")
    subprocess.run([sys.executable, *RERUN[name]], cwd=root, check=True)


def figures(root: str, speed: dict | None, docs: dict) -> dict:
    """Draw what there is data for; returns {name: path relative to root}."""
    out = {}
    if speed and speed["results"]:
        plots.speed(speed["results"], os.path.join(root, FIGURES["speed"]))
        out["speed"] = FIGURES["speed"]
    rows = memory_rows(docs.get("memory"))
    if rows:
        plots.memory(rows, os.path.join(root, FIGURES["memory"]))
        out["memory"] = FIGURES["memory"]
    panels = [(title, by_label(docs.get(key))) for title, key in
              (("MNIST-1D, docs/accuracy.md", "accuracy"), ("MNIST-1D, docs/accuracy_methods.md", "accuracy_methods"))
              if by_label(docs.get(key))]
    if panels:
        plots.accuracy(panels, os.path.join(root, FIGURES["accuracy"]),
                       {"MNIST-1D, docs/accuracy.md": "BP", "MNIST-1D, docs/accuracy_methods.md": "bp"})
        out["accuracy"] = FIGURES["accuracy"]
    return out


def main(argv: list[str] | None = None, bench=bench_model) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the full mode: about half an hour (default: quick, < 5 min)")
    p.add_argument("--root", default=".", help="the repository: docs/ read and figures written there")
    p.add_argument("--out", default="BENCHMARKS.md", help="the report, relative to --root")
    p.add_argument("--speed-from", metavar="FILE", help="measure no speed: the speed run saved in FILE")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = p.parse_args(argv)
    mode = "full" if a.full else "quick"
    log = (lambda msg: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    words = MODE_WORDS[mode]
    if a.speed_from:
        with open(a.speed_from) as f:
            speed = json.load(f)
        mode, words = "render", (f"nothing measured: the speed run saved in {a.speed_from} "
                                 f"(`{speed['meta']['command']}`), the rest quoted from docs/")
    else:
        speed = measure_speed(mode, log, bench)
        with open(os.path.join(a.root, SPEED_JSON), "w") as f:
            json.dump(speed, f, indent=1, default=str)
    measured = set()
    for name in MODES.get(mode, {}).get("rerun", ()):
        rerun(name, a.root, log)
        measured.add(name)
    docs = {k: read(os.path.join(a.root, path)) for k, path in summary.DOCS.items()}
    meta = {"mode": mode, "mode_words": words, "machine": machine(), "elapsed_s": time.perf_counter() - t0,
            "command": ("make bench" + (" FULL=1" if a.full else "") if os.environ.get("MAKELEVEL")
                        else "python benchmarks/report.py" + "".join(f" {x}" for x in (argv or sys.argv[1:])))}
    text = summary.render(meta, speed, docs, measured, figures(a.root, speed, docs))
    with open(os.path.join(a.root, a.out), "w") as f:
        f.write(text)
    log(f"wrote {os.path.join(a.root, a.out)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
