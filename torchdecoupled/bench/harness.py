"""In the benchmark's own process: start a run's processes and collect their reports, turn the clocks into
images/s (tokens/s for a language model), time the cuts once, and run every contender in interleaved
repeats (``bench_model``)."""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import pickle
import statistics
import time
from dataclasses import replace

from . import workload
from .jobs import CONTENDERS, MALLOC, OURS, PIPE, Job, is_lm
from .pipe import microbatch_problem, num_pieces
from .runners import _child

IMAGE_BATCH, LM_BATCH = 128, 32


class BenchError(RuntimeError):
    pass


def _context():
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torchdecoupled.engines.dist_launch",
                                "torchdecoupled.bench.runners", "torch.distributed.pipelining"])
    return ctx


def run_job(job: Job, deadline_s: float | None = None) -> dict:
    """Start the job's processes, wait for them (killing all on a failure or past the deadline), and
    return the raw per-rank reports."""
    from datetime import timedelta

    import torch.distributed as dist
    from ..engines.dist_launch import _bare_main

    ctx = _context()
    store = None
    rendezvous = None
    if job.world > 1:
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=job.timeout))
        rendezvous = ("store", ("127.0.0.1", store.port))
    deadline = time.monotonic() + (deadline_s or 120 + 20 * job.num_batches)
    procs, conns = [], []
    try:
        for rank in range(job.world):
            here, there = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(job, rank, rendezvous, there), daemon=True)
            with _bare_main():
                p.start()
            there.close()
            procs.append(p)
            conns.append(here)
        reports: dict[int, dict] = {}
        waiting = dict(enumerate(conns))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{job.variant}: no result after {deadline_s or 120 + 20 * job.num_batches:.0f} s "
                                 f"(ranks {sorted(waiting)} still running)")
            for c in mp.connection.wait(list(waiting.values()), min(left, 1.0)):
                r = next(r for r, cc in waiting.items() if cc is c)
                del waiting[r]
                try:
                    status, out = pickle.loads(c.recv_bytes())
                except (EOFError, OSError):
                    procs[r].join(1)
                    raise BenchError(f"{job.variant}: rank {r} died (exit code {procs[r].exitcode})") from None
                if status != "ok":
                    raise BenchError(out)
                reports[r] = out
        return {"job": job, "ranks": [reports[r] for r in range(job.world)]}
    finally:
        for p in procs:
            if p.is_alive():
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join(5)
        for c in conns:
            c.close()
        del store


def summarize_run(raw: dict) -> dict:
    """Images/s (tokens/s) of the steady-state window and the per-process diagnostics."""
    job: Job = raw["job"]
    a, z = job.first, job.first + job.steps
    per = []
    for rep in raw["ranks"]:
        (w0, p0, t0, f0), (w1, p1, t1, f1) = rep["marks"][a], rep["marks"][z]
        wall = w1 - w0
        row = {"step_ms": wall / job.steps / 1e6, "main_cpu_ms": (t1 - t0) / job.steps / 1e6,
               "other_cpu_ms": ((p1 - p0) - (t1 - t0)) / job.steps / 1e6, "faults": (f1 - f0) / job.steps,
               "rss_mb": rep["rss_mb"]}
        if "events" in rep:  # our engine: time blocked on messages, and computing, inside the window
            inside = lambda e: e[1] >= w0 and e[2] <= w1  # noqa: E731
            spent = {c: 0 for c in ("F", "B", "U", "wait", "send")}
            for cat, e0, e1 in rep["events"]:
                if inside((cat, e0, e1)):
                    spent[cat] += e1 - e0
            blocked = spent["wait"] + spent["send"]
            row["compute_ms"] = (spent["F"] + spent["B"] + spent["U"] - blocked) / job.steps / 1e6
            row["wait_ms"] = spent["wait"] / job.steps / 1e6
            row["send_wait_ms"] = spent["send"] / job.steps / 1e6
            row["idle"] = 1 - row["compute_ms"] / row["step_ms"]
        per.append(row)
    step_ms = statistics.fmean(r["step_ms"] for r in per)  # in steady state every process has the same period
    losses = [rep["loss"] for rep in raw["ranks"] if rep.get("loss") is not None]  # the rank with the loss
    return {"variant": job.variant, "per_s": job.batch * job.per_sample / (step_ms / 1e3), "step_ms": step_ms,
            "ranks": per, "loss": losses[0] if losses else None}


def time_cuts(model: str, stages: int, batch: int, in_shape=(3, 32, 32), model_opts=None,
              repeats: int = 2, measurements: int = 2) -> dict:
    """What ``--partition time`` does (``partition.layer_costs`` on batch 0, then the exact min-max DP), with
    one thread, once for the whole benchmark: boundaries without and with DTRP's recompute, and into 2K
    pieces (pipelining's schedules with two stages per rank), and the per-stage costs. Each layer's cost
    is the smaller of ``measurements`` medians of ``repeats`` (other jobs on the machine only ever add time)."""
    import torch
    from ..partition import balance_costs, layer_costs, stage_costs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job = Job("fdg", model, batch=batch, stages=stages, in_shape=tuple(in_shape), model_opts=model_opts or {},
                  warmup=0, steps=1)
        data = workload.data(job)
        net = workload.model(job, data.num_classes)
        sample = workload.batches(job, data).get(0)[0]
        runs = [layer_costs(list(net), sample, repeats) for _ in range(measurements)]
        costs = [(min(r[i][0] for r in runs), min(r[i][1] for r in runs)) for i in range(len(runs[0]))]
    finally:
        torch.set_num_threads(threads)
    out = {}
    for name, recompute, k in (("stash", False, stages), ("recompute", True, stages), ("pieces", False, 2 * stages)):
        if k > len(costs):
            continue  # too few layers for 2K pieces: the two-stage-per-rank schedules are left out
        cuts = balance_costs(costs, k, recompute=recompute)
        out[name] = {"boundaries": cuts, "stage_ms": [round(c * 1e3, 1) for c in stage_costs(costs, cuts, recompute)]}
    out["layers"] = len(costs)
    out["total_ms"] = round(sum(f + b for f, b in costs) * 1e3, 1)
    return out


def fixed_cuts(model: str, stages: int, partition: str, pieces: str | None, in_shape, model_opts=None) -> dict:
    """``--partition`` as cut points: K stages there; 2K pieces at ``pieces`` (cut points), or with about
    equal layer counts (``partition.split``'s "uniform")."""
    from ..partition import cut_points, split
    fixed = [int(v) for v in partition.split(",")]
    out = {"stash": {"boundaries": fixed}, "recompute": {"boundaries": fixed}}
    if pieces:
        out["pieces"] = {"boundaries": [int(v) for v in pieces.split(",")]}
    else:
        job = Job("fdg", model, stages=stages, in_shape=tuple(in_shape), model_opts=model_opts or {})
        net = workload.model(job, workload.VOCAB if job.lm else 10)
        if len(net) >= 2 * stages:
            out["pieces"] = {"boundaries": cut_points(split(net, 2 * stages, balance="uniform"))}
    return out


def plan_jobs(model: str, contenders, *, batch: int, stages: int, warmup: int, steps: int,
              microbatches, cuts: dict, in_shape=(3, 32, 32), model_opts=None, timeout: float = 120.0,
              malloc: str = "all", log=None) -> list[Job]:
    """One Job per contender, and per micro-batch count that the schedule can run (the others are logged)."""
    if malloc not in MALLOC:
        raise ValueError(f"unknown malloc setting {malloc!r} (valid: {', '.join(MALLOC)})")
    log = log or (lambda msg: None)
    base = dict(model=model, batch=batch, stages=stages, warmup=warmup, steps=steps, in_shape=tuple(in_shape),
                model_opts=dict(model_opts or {}), timeout=timeout, malloc=malloc)
    jobs = []
    for c in contenders:
        if c.startswith("bp_"):
            jobs.append(Job(c, threads=1 if c == "bp_1thread" else 2, **base))
        elif c in OURS:
            key = "recompute" if c == "dtrp" else "stash"
            jobs.append(Job(c, boundaries=tuple(cuts[key]["boundaries"]), **base))
        elif c in PIPE:
            key = "stash" if num_pieces(c, stages) == stages else "pieces"
            if key not in cuts:
                raise ValueError(f"{c} runs {num_pieces(c, stages)} pieces, but {model} has too few layers to cut "
                                 f"into {num_pieces(c, stages)}: leave {c} out of --contenders")
            mine = []
            for m in microbatches:
                problem = microbatch_problem(c, m, stages, batch)
                if problem:
                    log(f"  {c}: m={m} left out: {problem}")
                    continue
                mine.append(Job(c, boundaries=tuple(cuts[key]["boundaries"]), microbatches=m, **base))
            if not mine:
                raise ValueError(f"{c} can run none of --microbatches {','.join(map(str, microbatches))} at batch "
                                 f"{batch}: pass counts that divide the batch (1F1B, DualPipeV: at least one per "
                                 f"stage)")
            jobs += mine
        else:
            raise ValueError(f"unknown contender {c!r} (valid: {', '.join(CONTENDERS)})")
    return jobs


def bench_model(model: str, contenders=CONTENDERS, *, batch: int | None = None, stages=2, warmup=2, steps=6, repeats=5,
                microbatches=(2, 4, 8), select: str = "pilot", partition: str = "time", pieces: str | None = None,
                in_shape=None, context: int = 64, model_opts=None, timeout: float = 120.0, malloc: str = "all",
                log=None) -> dict:
    """Measure every contender ``repeats`` times, interleaved; returns medians and the details.

    The rate is images/s, or for a language model (``jobs.is_lm``: the GPT family, in_shape (context,))
    tokens/s: batch x context tokens per step. ``batch`` None: 128 images, or 32 sequences of a language
    model (the text recipe's batch, config.DATASET_DEFAULTS). Pipelining's micro-batch count: with
    ``select="pilot"`` every
    count runs once first (interleaved, the same steps) and the repeats run the fastest per schedule; with
    ``select="all"`` every count runs in every repeat and the best median wins (slower)."""
    log = log or (lambda msg: None)
    started = time.perf_counter()
    if select not in ("pilot", "all"):
        raise ValueError(f"unknown micro-batch selection {select!r} (valid: pilot, all)")
    lm = is_lm(model)
    batch = batch or (LM_BATCH if lm else IMAGE_BATCH)
    in_shape = tuple(in_shape or ((context,) if lm else (3, 32, 32)))
    unit = "tokens" if lm else "images"
    if partition == "time":
        cuts = time_cuts(model, stages, batch, in_shape, model_opts)
        if pieces:
            cuts["pieces"] = {"boundaries": [int(v) for v in pieces.split(",")]}
    else:
        cuts = fixed_cuts(model, stages, partition, pieces, in_shape, model_opts)
    log(f"{model}: cut (stash) {cuts['stash']['boundaries']}, (dtrp, recompute) {cuts['recompute']['boundaries']}, "
        f"(2K pieces) {cuts.get('pieces', {}).get('boundaries')}")
    jobs = plan_jobs(model, contenders, batch=batch, stages=stages, warmup=warmup, steps=steps,
                     microbatches=microbatches, cuts=cuts, in_shape=in_shape, model_opts=model_opts, timeout=timeout,
                     malloc=malloc, log=log)
    pilot: dict[str, float] = {}
    if select == "pilot":
        jobs = _pilot(jobs, pilot, unit, log)
    runs: dict[str, list[dict]] = {j.variant: [] for j in jobs}
    for r in range(repeats):
        k = r % len(jobs)
        for job in jobs[k:] + jobs[:k]:  # rotate: no contender always runs first or after the same one
            res = summarize_run(run_job(job))
            runs[job.variant].append(res)
            log(f"  repeat {r + 1}/{repeats} {job.variant:<40} {res['per_s']:9.1f} {unit}/s "
                f"({res['step_ms']:.0f} ms/step)")
    variants = {job.variant: _variant(job, runs[job.variant]) for job in jobs}
    best = {}
    for c in contenders:
        mine = [v for v in variants.values() if v["contender"] == c]
        best[c] = max(mine, key=lambda v: v["per_s"])
    log(f"{model}: {time.perf_counter() - started:.0f} s")
    return {"model": model, "unit": unit, "in_shape": list(in_shape), "batch": batch, "cuts": cuts, "pilot": pilot,
            "variants": variants, "best": best, "elapsed_s": round(time.perf_counter() - started, 1),
            "per_s": {c: round(best[c]["per_s"], 1) for c in contenders}}


def _pilot(jobs: list[Job], pilot: dict, unit: str, log) -> list[Job]:
    """Run every micro-batch count of every schedule once (a shorter run: it only ranks the counts) and
    keep the fastest per schedule."""
    for c in PIPE:
        mine = [j for j in jobs if j.contender == c]
        if len(mine) < 2:
            continue
        for job in mine:
            short = replace(job, warmup=min(job.warmup, 1), steps=max(2, job.steps // 2))
            pilot[job.variant] = round(summarize_run(run_job(short))["per_s"], 1)
            log(f"  pilot {job.variant:<40} {pilot[job.variant]:9.1f} {unit}/s")
        keep = max(mine, key=lambda j: pilot[j.variant])
        jobs = [j for j in jobs if j.contender != c or j is keep]
    return jobs


def _variant(job: Job, rs: list[dict]) -> dict:
    return {"contender": job.contender, "microbatches": job.microbatches,
            "per_s": statistics.median(x["per_s"] for x in rs), "all": [round(x["per_s"], 1) for x in rs],
            "loss": rs[-1]["loss"],
            "ranks": [{key: statistics.median(x["ranks"][i][key] for x in rs) for key in rs[0]["ranks"][i]}
                      for i in range(len(rs[0]["ranks"]))]}
