"""The speed benchmark's command line (``benchmarks/speed.py``; ``add_arguments`` / ``run_cli`` for a
subcommand)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .harness import BenchError, bench_model
from .jobs import CONTENDERS, MALLOC
from .report import markdown, verdict, write_report

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet20",
                   help="model, or a comma-separated list (default resnet20); a language model (gpt, gpt_mini, "
                        "gpt_small) trains on random byte tokens with lm_loss and reports tokens/s")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of the contenders")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default 128 images; a language model: 32 sequences)")
    p.add_argument("--context", type=int, default=64, help="a language model's tokens per sequence (default 64)")
    p.add_argument("--stages", "-K", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="runs per contender, interleaved (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="steady steps skipped in every run (after the fill)")
    p.add_argument("--steps", type=int, default=6, help="steps timed in every run (even: ADL's M = 2)")
    p.add_argument("--microbatches", default="2,4,8", help="pipelining micro-batch counts to try (best wins)")
    p.add_argument("--select", default="pilot", choices=("pilot", "all"),
                   help="pipelining's micro-batch count: pilot (each count runs once first, the fastest is "
                        "repeated) or all (every count in every repeat, the best median wins)")
    p.add_argument("--partition", default="time", help="time (measured once, as --partition time) or cut points")
    p.add_argument("--pieces", metavar="CUTS",
                   help="cut points of the 2K pieces that the two-stage-per-rank pipelining schedules run (default: "
                        "by the measured times with --partition time, else about equal layer counts)")
    p.add_argument("--malloc", default="all", choices=MALLOC,
                   help="all (default): every contender's processes keep freed memory (glibc mallopt, as our engine "
                        "does itself, engines/malloc.py); shipped: only ours; none: glibc's defaults everywhere")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {contender: images/s, or tokens/s for a language model} (one model)")
    p.add_argument("--details", metavar="FILE", help="write everything measured as JSON to FILE")
    p.add_argument("--doc", metavar="FILE", help="write the Markdown report (e.g. docs/speed.md)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--render", metavar="FILE", help="measure nothing: write --doc / print from a --details FILE")


def run_cli(a) -> int:
    from ..metrics import machine
    if a.render:
        with open(a.render) as f:
            saved = json.load(f)
        return _output(a, [upgrade(r, saved["meta"]) for r in saved["results"]], saved["meta"])
    models = [m for m in a.model.split(",") if m]
    contenders = [c for c in a.contenders.split(",") if c]
    if a.json and len(models) != 1:
        raise ValueError("--json reports one model: pass one --model (the --doc table takes several)")
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad:
        raise ValueError(f"unknown contender {bad[0]!r} (valid: {', '.join(CONTENDERS)})")
    if a.repeats < 1 or a.steps < 1 or a.warmup < 0:
        raise ValueError("--repeats and --steps must be >= 1, --warmup >= 0")
    if (a.batch is not None and a.batch < 1) or a.context < 1:
        raise ValueError(f"--batch and --context must be >= 1, got {a.batch} and {a.context}")
    log = (lambda msg: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0, load0 = time.perf_counter(), os.getloadavg()
    try:
        results = [bench_model(m, contenders, batch=a.batch, stages=a.stages, warmup=a.warmup, steps=a.steps,
                               repeats=a.repeats, microbatches=[int(v) for v in a.microbatches.split(",")],
                               select=a.select, partition=a.partition, pieces=a.pieces, context=a.context,
                               malloc=a.malloc, log=log) for m in models]
    except BenchError as e:
        print(f"torchdecoupled bench: error: {e}", file=sys.stderr)
        return 1
    meta = {"machine": machine(), "stages": a.stages, "batch": a.batch, "repeats": a.repeats,
            "warmup": a.warmup, "steps": a.steps, "microbatches": a.microbatches, "partition": a.partition,
            "malloc": a.malloc, "select": a.select, "context": a.context, "pieces": a.pieces,
            "loadavg_before": load0, "loadavg_after": os.getloadavg(),
            "elapsed_s": round(time.perf_counter() - t0, 1), "command": _command()}
    for r in results:
        log(f"{r['model']} ({r['unit']}/s): {json.dumps(r['per_s'])} {json.dumps(verdict(r))}")
    if a.details:
        with open(a.details, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1, default=str)
    return _output(a, results, meta)


def _output(a, results: list[dict], meta: dict) -> int:
    for r in results:
        r["targets"] = verdict(r)
    if a.doc:
        write_report(a.doc, results, meta)
    if a.json:
        print(json.dumps(results[0]["per_s"]))
    else:
        print(markdown(results, meta))
        for r in results:
            print(f"{r['model']}: {r['targets']}")
    return 0

def upgrade(result: dict, meta: dict) -> dict:
    """A --details file written before tokens/s: its "images_per_s" keys are "per_s", images of 3 x 32 x 32."""
    def rename(d: dict) -> dict:
        return {("per_s" if k == "images_per_s" else k): v for k, v in d.items()}
    out = rename(result)
    out["variants"] = {k: rename(v) for k, v in out.get("variants", {}).items()}
    out["best"] = {k: rename(v) for k, v in out.get("best", {}).items()}
    out.setdefault("unit", "images")
    out.setdefault("in_shape", [3, 32, 32])
    out.setdefault("batch", meta.get("batch"))
    return out


def _command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        argv[0] = "python " + os.path.relpath(argv[0])
    elif argv:
        argv[0] = os.path.basename(argv[0])
    return " ".join(argv)

def main(argv: list[str] | None = None) -> int:
    from . import __doc__ as about  # the package's docstring: the benchmark's description
    p = argparse.ArgumentParser(prog="speed", description=about.split("\n\n")[0])
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        return run_cli(a)
    except ValueError as e:
        print(f"speed: error: {e}", file=sys.stderr)
        return 2
