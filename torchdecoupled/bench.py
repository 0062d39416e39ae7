"""Speed: images/s of BP, of our distributed engine (FDG, ADL, DTRP) and of torch.distributed.pipelining
(GPipe, 1F1B), side by side in one run, on CIFAR-shaped synthetic data (issue 4, "Speed").

Contenders (K = 2 by default; every multi-process contender runs one process per stage, one thread
each, gloo on CPU):

- ``bp_1thread`` / ``bp_2threads``: a plain PyTorch training step (forward, loss, backward, SGD step)
  in one process with 1 / 2 threads;
- ``fdg``, ``adl`` (M = 2), ``dtrp``: ``--engine dist``'s own stage processes (``StageProcess``: the
  same code as ``torchdecoupled train --engine dist``), cut where ``--partition time`` cuts (the
  per-layer costs are measured once, up front, and every run of the benchmark uses that cut; DTRP's time
  balance counts its recompute);
- ``pipelining_gpipe`` / ``pipelining_1f1b``: ``PipelineStage`` + ``ScheduleGPipe`` / ``Schedule1F1B``
  on the same processes and threads, the same model split as FDG, the best micro-batch count of
  ``--microbatches`` (by default a pilot run of each count picks the one that is repeated; ``--select
  all`` repeats every count and takes the best median).

Fairness: the same model, seed, batch size, data (``data.Batches`` over ``load_synthetic``) and SGD
(momentum 0.9, weight decay 5e-4) everywhere; every run is a fresh set of processes (forkserver, torch
preloaded); every contender runs once per repeat, repeats interleave all contenders (the order rotates
from repeat to repeat), and the reported number is the median over repeats.

Steady state only: each process records its clocks at the start of every tick (our engine) or step
(the others). A run's rate is ``batch * M / period``, the period being the mean over its processes of
``clock at step W + M - clock at step W`` (in steady state every process of a pipeline has the same
period; over a short window they differ by how far one runs ahead of the other), where W skips the
warm-up (and, for our engine, the 2(K-1) ticks that fill the pipeline) and M is ``--steps``.
Start-up, warm-up, the pipeline's drain and the final evaluation are outside the window. Per process the run also reports its peak RSS (VmHWM), the CPU its main thread used (compute)
and the CPU of its other threads (gloo's transport threads), and, for our engine, the time it blocked on
messages (from the engine's own timeline recorder).

    python benchmarks/speed.py --json                                   # ResNet-20: {contender: images/s}
    python benchmarks/speed.py --model resnet20,resnet56 --steps 4 --doc docs/speed.md   # about 10 min
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import resource
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field, replace

CONTENDERS = ("bp_1thread", "bp_2threads", "fdg", "adl", "dtrp", "pipelining_gpipe", "pipelining_1f1b")
OURS = {"fdg": ("fdg", {}), "adl": ("adl", {"accumulate": 2}), "dtrp": ("dtrp", {})}
PIPE = {"pipelining_gpipe": "gpipe", "pipelining_1f1b": "1f1b"}
MALLOC = ("all", "shipped", "none")
SEED, LR, MOMENTUM, WEIGHT_DECAY = 0, 0.1, 0.9, 5e-4


@dataclass(frozen=True)
class Job:
    """One run of one contender (a variant: pipelining with one micro-batch count)."""
    contender: str                      # a key of CONTENDERS
    model: str
    batch: int = 128
    stages: int = 2
    warmup: int = 2                     # steady steps skipped before the window
    steps: int = 6                      # steps in the window
    threads: int = 1                    # per process
    boundaries: tuple[int, ...] = ()    # the model split (multi-process contenders)
    microbatches: int = 0               # pipelining
    in_shape: tuple[int, ...] = (3, 32, 32)
    model_opts: dict = field(default_factory=dict)
    timeout: float = 120.0              # seconds a stage waits on a peer
    malloc: str = "all"                 # all: every process keeps freed memory (engines/malloc.py); shipped:
                                        # only ours (the engine does it itself); none: glibc's defaults

    @property
    def variant(self) -> str:
        name = f"{self.contender}/m{self.microbatches}" if self.microbatches else self.contender
        return name if self.malloc == "all" else f"{name}/malloc-{self.malloc}"

    @property
    def world(self) -> int:
        return 1 if self.contender.startswith("bp_") else self.stages

    @property
    def fill(self) -> int:
        """Ticks before every stage is busy: our engine's pipeline fill (delay 2(K-1) at stage 0)."""
        return 2 * (self.stages - 1) if self.contender in OURS else 0

    @property
    def first(self) -> int:
        """Index of the first step (tick) in the window."""
        return self.fill + self.warmup

    @property
    def num_batches(self) -> int:
        """Batches trained. Our engine: every stage does F and B in ticks 2(K-1) .. N-1, so the window
        (ticks first .. first + steps - 1, ending when tick first + steps begins) is all steady."""
        return self.first + self.steps


# ---- in the child processes ----------------------------------------------------------------------------

def _clock() -> tuple[int, int, int, int]:
    """(wall ns, this process's CPU ns, this thread's CPU ns, this process's minor page faults)."""
    return (time.perf_counter_ns(), time.process_time_ns(), time.thread_time_ns(),
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _data(job: Job):
    from .data.synthetic import load_synthetic
    return load_synthetic(seed=SEED, in_shape=job.in_shape, n_train=job.num_batches * job.batch, n_test=job.batch)


def _batches(job: Job, data):
    from .data.batches import Batches
    return Batches(data.train_x, data.train_y, job.batch, SEED)


def _model(job: Job, num_classes: int):
    import torch
    from .models import build_model
    torch.manual_seed(SEED)  # as build_run does
    return build_model(job.model, num_classes, job.in_shape, **job.model_opts)


def _sgd(params):
    import torch
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def _run_bp(job: Job, rank: int, rendezvous) -> dict:
    import torch
    data = _data(job)
    batches, model = _batches(job, data), _model(job, data.num_classes)
    opt = _sgd(model.parameters())
    marks = []
    for b in range(job.first + job.steps):
        marks.append(_clock())
        x, y = batches.get(b)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    marks.append(_clock())
    return {"marks": marks, "loss": float(loss.detach())}


class _TickClock:
    """Stands in for the engine's Schedule in ``StageProcess.train``: records the clocks at the start of
    every tick (``train`` asks ``schedule.actions(t, k)`` once per tick), delegates everything else."""

    def __init__(self, schedule):
        self._schedule, self.marks = schedule, []

    def __getattr__(self, name):
        return getattr(self._schedule, name)

    def actions(self, t: int, k: int):
        self.marks.append(_clock())
        return self._schedule.actions(t, k)


def _ours_config(job: Job):
    from .config import RunConfig
    method, opts = OURS[job.contender]
    return RunConfig(method=method, method_opts=dict(opts), stages=job.stages, dataset="synthetic",
                     model=job.model, model_opts=dict(job.model_opts), epochs=1, batch_size=job.batch, lr=LR,
                     momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, seed=SEED,
                     partition=",".join(map(str, job.boundaries)), engine="dist", threads=1, progress=False,
                     timeout=job.timeout)


def _run_ours(job: Job, rank: int, rendezvous) -> dict:
    """One rank of ``--engine dist``: the engine's own StageProcess, on synthetic data of the right size."""
    from . import data as data_mod
    from .engines.dist_layout import Layout
    from .engines.dist_worker import StageProcess

    n_train = job.num_batches * job.batch  # the engine loads "synthetic" by name: give it this size
    data_mod.DATASETS["synthetic"] = lambda root, seed, **kw: data_mod.load_synthetic(
        seed=seed, in_shape=job.in_shape, n_train=n_train, n_test=job.batch)
    proc = StageProcess(_ours_config(job), Layout(job.stages, 1, rank), "cpu", "gloo", rendezvous)
    clock = proc.schedule = _TickClock(proc.schedule)
    proc.train()
    rec = proc.recorder
    events = [(cat, t0 + rec.origin, t1 + rec.origin) for cat, _, _, t0, t1 in rec.events
              if cat in ("F", "B", "U", "wait", "send")]
    summary, _ = proc.finish()
    return {"marks": clock.marks, "events": events,
            "loss": summary["train_loss"] if summary is not None else None}


def _run_pipe(job: Job, rank: int, rendezvous) -> dict:
    """One rank of torch.distributed.pipelining: PipelineStage + ScheduleGPipe / Schedule1F1B."""
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
    from .engines.dist_layout import Layout, init_process_group
    from .engines.dist_plan import feature_shapes
    from .partition import split

    world = job.world
    init_process_group("gloo", Layout(world, 1, rank), rendezvous, job.timeout)
    data = _data(job)
    batches, model = _batches(job, data), _model(job, data.num_classes)
    modules = split(model, world, boundaries=list(job.boundaries))
    module = modules[rank]
    mb = -(-job.batch // job.microbatches)
    if rank == 0:
        example = data.train_x[:mb].clone()
    else:  # a later stage's input carries a gradient: requires_grad must say so (else a silent hang)
        shape, dtype = feature_shapes(modules, data.train_x[:1])[rank - 1]
        example = torch.zeros((mb, *shape), dtype=dtype, requires_grad=True)
    stage = PipelineStage(module, rank, world, torch.device("cpu"), input_args=(example,))
    cls = ScheduleGPipe if PIPE[job.contender] == "gpipe" else Schedule1F1B
    schedule = cls(stage, job.microbatches, loss_fn=torch.nn.functional.cross_entropy)
    opt = _sgd(module.parameters())
    dist.barrier()
    marks, losses = [], []
    for b in range(job.first + job.steps):
        marks.append(_clock())
        x, y = batches.get(b)
        losses.clear()
        if rank == 0:
            schedule.step(x)
        elif rank == world - 1:
            schedule.step(target=y, losses=losses)
        else:
            schedule.step()
        opt.step()
        opt.zero_grad(set_to_none=True)
    marks.append(_clock())
    loss = float(sum(x.detach() for x in losses) / len(losses)) if losses else None
    dist.barrier()
    dist.destroy_process_group()
    return {"marks": marks, "loss": loss}


RUNNERS = {"bp": _run_bp, "ours": _run_ours, "pipe": _run_pipe}


def _kind(contender: str) -> str:
    return "bp" if contender.startswith("bp_") else "ours" if contender in OURS else "pipe"


def _child(job: Job, rank: int, rendezvous, conn) -> None:
    import torch
    code = 1
    try:
        from .engines.malloc import ENV, keep_freed_memory
        if job.malloc == "none":
            os.environ[ENV] = "0"
        elif job.malloc == "all":
            keep_freed_memory()
        torch.set_num_threads(job.threads)
        out = RUNNERS[_kind(job.contender)](job, rank, rendezvous)
        out["rss_mb"] = _peak_rss_mb()
        conn.send_bytes(pickle.dumps(("ok", out)))
        code = 0
    except BaseException as e:  # noqa: BLE001 - report whatever it is
        traceback.print_exc()
        with contextlib.suppress(OSError):
            conn.send_bytes(pickle.dumps(("error", f"{job.variant} rank {rank}: {type(e).__name__}: {e}")))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# ---- in the benchmark's own process -------------------------------------------------------------------

class BenchError(RuntimeError):
    pass


def _context():
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torchdecoupled.engines.dist_launch",
                                "torchdecoupled.bench"])
    return ctx


def run_job(job: Job, deadline_s: float | None = None) -> dict:
    """Start the job's processes, wait for them (killing all on a failure or past the deadline), and
    return the raw per-rank reports."""
    from datetime import timedelta

    import torch.distributed as dist
    from .engines.dist_launch import _bare_main

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
    """Images/s of the steady-state window and the per-process diagnostics."""
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
    return {"variant": job.variant, "images_per_s": job.batch / (step_ms / 1e3), "step_ms": step_ms,
            "ranks": per, "loss": raw["ranks"][-1].get("loss")}


def time_cuts(model: str, stages: int, batch: int, in_shape=(3, 32, 32), model_opts=None,
              repeats: int = 2, measurements: int = 2) -> dict:
    """What ``--partition time`` does (``partition.layer_costs`` on batch 0, then the exact min-max DP), with
    one thread, once for the whole benchmark: boundaries without and with DTRP's recompute, and the
    per-stage costs. Each layer's cost is the smaller of ``measurements`` medians of ``repeats`` (other
    jobs on the machine only ever add time)."""
    import torch
    from .partition import balance_costs, layer_costs, stage_costs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job = Job("fdg", model, batch=batch, stages=stages, in_shape=tuple(in_shape), model_opts=model_opts or {},
                  warmup=0, steps=1)
        data = _data(job)
        net = _model(job, data.num_classes)
        sample = _batches(job, data).get(0)[0]
        runs = [layer_costs(list(net), sample, repeats) for _ in range(measurements)]
        costs = [(min(r[i][0] for r in runs), min(r[i][1] for r in runs)) for i in range(len(runs[0]))]
    finally:
        torch.set_num_threads(threads)
    out = {}
    for name, recompute in (("stash", False), ("recompute", True)):
        cuts = balance_costs(costs, stages, recompute=recompute)
        out[name] = {"boundaries": cuts, "stage_ms": [round(c * 1e3, 1) for c in stage_costs(costs, cuts, recompute)]}
    out["layers"] = len(costs)
    out["total_ms"] = round(sum(f + b for f, b in costs) * 1e3, 1)
    return out


def plan_jobs(model: str, contenders, *, batch: int, stages: int, warmup: int, steps: int,
              microbatches, cuts: dict, in_shape=(3, 32, 32), model_opts=None, timeout: float = 120.0,
              malloc: str = "all") -> list[Job]:
    if malloc not in MALLOC:
        raise ValueError(f"unknown malloc setting {malloc!r} (valid: {', '.join(MALLOC)})")
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
            for m in microbatches:
                if c == "pipelining_1f1b" and m < stages:
                    continue  # 1F1B needs n_microbatches >= stages
                jobs.append(Job(c, boundaries=tuple(cuts["stash"]["boundaries"]), microbatches=m, **base))
        else:
            raise ValueError(f"unknown contender {c!r} (valid: {', '.join(CONTENDERS)})")
    return jobs


def bench_model(model: str, contenders=CONTENDERS, *, batch=128, stages=2, warmup=2, steps=6, repeats=5,
                microbatches=(2, 4, 8), select: str = "pilot", partition: str = "time", in_shape=(3, 32, 32),
                model_opts=None, timeout: float = 120.0, malloc: str = "all", log=None) -> dict:
    """Measure every contender ``repeats`` times, interleaved; returns medians and the details.

    Pipelining's micro-batch count: with ``select="pilot"`` every count runs once first (interleaved, the
    same steps) and the repeats run the fastest per schedule; with ``select="all"`` every count runs in
    every repeat and the best median wins (slower)."""
    log = log or (lambda msg: None)
    started = time.perf_counter()
    if select not in ("pilot", "all"):
        raise ValueError(f"unknown micro-batch selection {select!r} (valid: pilot, all)")
    if partition == "time":
        cuts = time_cuts(model, stages, batch, in_shape, model_opts)
    else:
        fixed = [int(v) for v in partition.split(",")]
        cuts = {"stash": {"boundaries": fixed}, "recompute": {"boundaries": fixed}}
    log(f"{model}: cut (stash) {cuts['stash']['boundaries']}, (dtrp, recompute) {cuts['recompute']['boundaries']}")
    jobs = plan_jobs(model, contenders, batch=batch, stages=stages, warmup=warmup, steps=steps,
                     microbatches=microbatches, cuts=cuts, in_shape=in_shape, model_opts=model_opts, timeout=timeout,
                     malloc=malloc)
    pilot: dict[str, float] = {}
    if select == "pilot":
        for c in PIPE:
            mine = [j for j in jobs if j.contender == c]
            if len(mine) < 2:
                continue
            for job in mine:  # a shorter run: it only ranks the counts
                short = replace(job, warmup=min(job.warmup, 1), steps=max(2, job.steps // 2))
                pilot[job.variant] = round(summarize_run(run_job(short))["images_per_s"], 1)
                log(f"  pilot {job.variant:<30} {pilot[job.variant]:7.1f} img/s")
            keep = max(mine, key=lambda j: pilot[j.variant])
            jobs = [j for j in jobs if j.contender != c or j is keep]
    runs: dict[str, list[dict]] = {j.variant: [] for j in jobs}
    for r in range(repeats):
        k = r % len(jobs)
        for job in jobs[k:] + jobs[:k]:  # rotate: no contender always runs first or after the same one
            res = summarize_run(run_job(job))
            runs[job.variant].append(res)
            log(f"  repeat {r + 1}/{repeats} {job.variant:<30} {res['images_per_s']:7.1f} img/s "
                f"({res['step_ms']:.0f} ms/step)")
    variants = {}
    for job in jobs:
        rs = runs[job.variant]
        variants[job.variant] = {
            "contender": job.contender, "microbatches": job.microbatches,
            "images_per_s": statistics.median(x["images_per_s"] for x in rs),
            "all": [round(x["images_per_s"], 1) for x in rs],
            "ranks": [{key: statistics.median(x["ranks"][i][key] for x in rs) for key in rs[0]["ranks"][i]}
                      for i in range(len(rs[0]["ranks"]))],
        }
    best = {}
    for c in contenders:
        mine = [v for v in variants.values() if v["contender"] == c]
        best[c] = max(mine, key=lambda v: v["images_per_s"])
    log(f"{model}: {time.perf_counter() - started:.0f} s")
    return {"model": model, "cuts": cuts, "pilot": pilot, "variants": variants, "best": best,
            "elapsed_s": round(time.perf_counter() - started, 1),
            "images_per_s": {c: round(best[c]["images_per_s"], 1) for c in contenders}}


# ---- report ---------------------------------------------------------------------------------------------

def verdict(result: dict) -> dict:
    """The issue's targets: FDG >= 1.8x BP with 1 thread, and >= 1.15x the best pipelining schedule.

    Two estimates of each ratio: of the medians, and the median over repeats of the ratio within a repeat
    (``paired``: the runs of one repeat are minutes apart, so a slow spell of the machine cancels out)."""
    ips, best = result["images_per_s"], result.get("best", {})
    out = {}
    pipes = [c for c in PIPE if c in ips]
    if "fdg" in ips and "bp_1thread" in ips:
        out["fdg_over_bp_1thread"] = round(ips["fdg"] / ips["bp_1thread"], 3)
    if "fdg" in ips and pipes:
        out["fdg_over_best_pipelining"] = round(ips["fdg"] / max(ips[c] for c in pipes), 3)
    runs = {c: best[c]["all"] for c in ips if c in best and "all" in best[c]}
    if "fdg" in runs and "bp_1thread" in runs:
        out["fdg_over_bp_1thread_paired"] = round(statistics.median(
            f / b for f, b in zip(runs["fdg"], runs["bp_1thread"])), 3)
    if "fdg" in runs and pipes and all(c in runs for c in pipes):
        out["fdg_over_best_pipelining_paired"] = round(statistics.median(
            f / max(p) for f, *p in zip(runs["fdg"], *(runs[c] for c in pipes))), 3)
    return out


def markdown(results: list[dict], meta: dict) -> str:
    lines = []
    contenders = list(results[0]["images_per_s"])
    lines.append("| contender | " + " | ".join(f"{r['model']} img/s" for r in results) + " | processes x threads |")
    lines.append("|---|" + "---:|" * len(results) + "---|")
    for c in contenders:
        cells = []
        for r in results:
            b = r["best"][c]
            extra = f" (m={b['microbatches']})" if b["microbatches"] else ""
            cells.append(f"{b['images_per_s']:.1f}{extra}")
        how = "1 x 1" if c == "bp_1thread" else "1 x 2" if c == "bp_2threads" else f"{meta['stages']} x 1"
        lines.append(f"| `{c}` | " + " | ".join(cells) + f" | {how} |")
    return "\n".join(lines)


def detail_table(result: dict) -> str:
    rows = ["| run | img/s (median) | every repeat | ms/batch | per process: main-thread CPU ms/batch, other threads' "
            "CPU ms/batch, page faults/batch, [ours: blocked on messages ms/batch, idle], peak RSS MB |",
            "|---|---:|---|---:|---|"]
    for name, v in result["variants"].items():
        per = []
        for i, r in enumerate(v["ranks"]):
            s = f"r{i}: {r['main_cpu_ms']:.0f}, {r['other_cpu_ms']:.0f}, {r['faults']:.0f}"
            if "wait_ms" in r:
                s += f", [{r['wait_ms'] + r['send_wait_ms']:.0f}, {r['idle']:.0%}]"
            s += f", {r['rss_mb']:.0f}"
            per.append(s)
        step = statistics.fmean(r["step_ms"] for r in v["ranks"])
        rows.append(f"| `{name}` | {v['images_per_s']:.1f} | {', '.join(f'{x:.0f}' for x in v['all'])} | "
                    f"{step:.0f} | {'; '.join(per)} |")
    return "\n".join(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet20", help="model, or a comma-separated list (default resnet20)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of the contenders")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--stages", "-K", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="runs per contender, interleaved (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="steady steps skipped in every run (after the fill)")
    p.add_argument("--steps", type=int, default=6, help="steps timed in every run (even: ADL's M = 2)")
    p.add_argument("--microbatches", default="2,4,8", help="pipelining micro-batch counts to try (best wins)")
    p.add_argument("--select", default="pilot", choices=("pilot", "all"),
                   help="pipelining's micro-batch count: pilot (each count runs once first, the fastest is "
                        "repeated) or all (every count in every repeat, the best median wins)")
    p.add_argument("--partition", default="time", help="time (measured once, as --partition time) or cut points")
    p.add_argument("--malloc", default="all", choices=MALLOC,
                   help="all (default): every contender's processes keep freed memory (glibc mallopt, as our engine "
                        "does itself, engines/malloc.py); shipped: only ours; none: glibc's defaults everywhere")
    p.add_argument("--json", action="store_true", help="print one JSON object {contender: images/s} (one model)")
    p.add_argument("--details", metavar="FILE", help="write everything measured as JSON to FILE")
    p.add_argument("--doc", metavar="FILE", help="write the Markdown report (e.g. docs/speed.md)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--render", metavar="FILE", help="measure nothing: write --doc / print from a --details FILE")


def run_cli(a) -> int:
    from .metrics import machine
    if a.render:
        with open(a.render) as f:
            saved = json.load(f)
        return _output(a, saved["results"], saved["meta"])
    models = [m for m in a.model.split(",") if m]
    contenders = [c for c in a.contenders.split(",") if c]
    if a.json and len(models) != 1:
        raise ValueError("--json reports one model: pass one --model (the --doc table takes several)")
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad:
        raise ValueError(f"unknown contender {bad[0]!r} (valid: {', '.join(CONTENDERS)})")
    if a.repeats < 1 or a.steps < 1 or a.warmup < 0:
        raise ValueError("--repeats and --steps must be >= 1, --warmup >= 0")
    log = (lambda msg: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0, load0 = time.perf_counter(), os.getloadavg()
    try:
        results = [bench_model(m, contenders, batch=a.batch, stages=a.stages, warmup=a.warmup, steps=a.steps,
                               repeats=a.repeats, microbatches=[int(v) for v in a.microbatches.split(",")],
                               select=a.select, partition=a.partition, malloc=a.malloc, log=log) for m in models]
    except BenchError as e:
        print(f"torchdecoupled bench: error: {e}", file=sys.stderr)
        return 1
    meta = {"machine": machine(), "stages": a.stages, "batch": a.batch, "repeats": a.repeats,
            "warmup": a.warmup, "steps": a.steps, "microbatches": a.microbatches, "partition": a.partition,
            "malloc": a.malloc, "select": a.select,
            "loadavg_before": load0, "loadavg_after": os.getloadavg(),
            "elapsed_s": round(time.perf_counter() - t0, 1), "command": _command()}
    for r in results:
        log(f"{r['model']}: {json.dumps(r['images_per_s'])} {json.dumps(verdict(r))}")
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
        print(json.dumps(results[0]["images_per_s"]))
    else:
        print(markdown(results, meta))
        for r in results:
            print(f"{r['model']}: {r['targets']}")
    return 0


def decompose(result: dict, contender: str) -> dict | None:
    """Speed-up over BP with 1 thread as a product of four factors (from the medians of the runs):

    ``T_bp / T = (T_bp / C_bp) * (C_bp / sum C_k) * (sum C_k / max C_k) * (max C_k / T)``

    where T is wall time per batch and C the main thread's CPU time per batch (C_k: stage process k).
    ``C_bp / sum C_k`` is the work efficiency (extra compute for the same batch: stashing, recompute,
    small micro-batches, page faults), ``sum / max`` the balance (at most K), ``max C_k / T`` how busy the
    busiest stage is (below 1: waiting on messages, pipeline bubbles, or CPU taken by other threads or
    processes), ``T_bp / C_bp`` the same for BP (below 1: BP itself lost CPU)."""
    if "bp_1thread" not in result["variants"] or contender not in result["best"]:
        return None
    bp = result["variants"]["bp_1thread"]["ranks"][0]
    ranks = result["best"][contender]["ranks"]
    cpu = [r["main_cpu_ms"] for r in ranks]
    step = statistics.fmean(r["step_ms"] for r in ranks)
    return {"bp_busy": bp["main_cpu_ms"] / bp["step_ms"], "work": bp["main_cpu_ms"] / sum(cpu),
            "balance": sum(cpu) / max(cpu), "busy": max(cpu) / step, "speedup": bp["step_ms"] / step,
            "cpu_ms": cpu, "step_ms": step, "bp_step_ms": bp["step_ms"], "bp_cpu_ms": bp["main_cpu_ms"]}


HOW = """## How it is measured

- **Same work everywhere**: the same model (seed 0), batch, synthetic data (`data.Batches` over
  `load_synthetic`), loss and SGD (lr 0.1, momentum 0.9, weight decay 5e-4). Every run is a fresh set of
  processes started from one forkserver with torch preloaded; the multi-process contenders run one
  process per stage with one thread each and talk over gloo on 127.0.0.1.
- **Our engine** runs exactly what `torchdecoupled train --engine dist` runs in each process
  (`engines.dist_worker.StageProcess`: Stage, Worker, DistTransport, timeline recorder on), cut where
  `--partition time` cuts. The per-layer costs are measured once at the start of the benchmark
  (`partition.layer_costs`, one thread; each layer's cost the smaller of two medians of two
  training-like passes) and every run uses that cut, so repeats differ only by timing noise. DTRP's
  time balance counts its recompute (F + F + B on stage 0).
- **torch.distributed.pipelining**: `PipelineStage(input_args=...)` with the right `requires_grad`,
  `ScheduleGPipe` / `Schedule1F1B` with cross-entropy as `loss_fn`, the same cut as FDG. The
  micro-batch count: each count of the list runs once first (a pilot run with half the steps) and the
  fastest per schedule is the one repeated (`--select all`: every count in every repeat, the best median
  wins).
- **Steady state**: every process records its clocks when each tick (our engine: the start of
  `schedule.actions(t, k)`) or step (the others) begins. A run's rate is batch x steps / (wall time of
  those steps, the mean over its processes: in steady state they share one period, over a few steps
  they differ by how far one runs ahead), after the warm-up steps (and, for our engine, after the 2(K-1)
  ticks that fill the pipeline); the pipeline's drain and the final evaluation come after the window.
- **Interleaved medians**: each repeat runs every contender once, the order rotating from repeat to
  repeat, so a burst of load from elsewhere on the machine hits every contender alike.
- **Memory allocator**: by default (`--malloc all`) every process of every contender keeps freed memory
  for reuse (glibc `mallopt`, `torchdecoupled/engines/malloc.py`; our stage processes do this
  themselves). With glibc's defaults, every contender's steady state takes thousands of page faults per
  step (BP up to 50,000, some 100 ms of a 750 ms step here) as large activation buffers are returned to
  the system and taken again; `--malloc shipped` measures each system as it comes, `--malloc none`
  glibc's defaults everywhere.
- **Per process** (detail tables): the main thread's CPU time per batch (compute), the CPU of its other
  threads (gloo's transport threads; BP with 2 threads: the second thread), page faults per batch, for
  our engine the time it blocked on messages inside the window (from its timeline recorder) and its idle
  fraction, and its peak RSS (VmHWM, the torch library included).
"""


def _command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        argv[0] = "python " + os.path.relpath(argv[0])
    elif argv:
        argv[0] = os.path.basename(argv[0])
    return " ".join(argv)


def report(results: list[dict], meta: dict) -> str:
    """docs/speed.md: the table, the targets and their diagnosis, how it was measured, every run."""
    m = meta["machine"]
    out = ["# Speed: images/s, K = 2 on this machine\n",
           f"    {meta['command']}\n",
           f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, commit "
           f"{m['commit']} (plus the working tree of this change); load average {meta['loadavg_before'][0]:.2f} "
           f"before, {meta['loadavg_after'][0]:.2f} after (other jobs share this machine); {meta['elapsed_s']:.0f} s "
           f"in all (" + ", ".join(f"{r['model']} {r.get('elapsed_s', 0):.0f} s" for r in results) + ").\n",
           f"Batch {meta['batch']}, K = {meta['stages']}, CIFAR-shaped synthetic data (3 x 32 x 32, 10 classes); "
           f"images/s are medians of {meta['repeats']} interleaved runs, each timed over {meta['steps']} steady "
           f"steps after {meta['warmup']} warm-up steps (and the pipeline fill); malloc: {meta['malloc']}. "
           f"Pipelining: the best of {meta['microbatches']} micro-batches (m), "
           + ("chosen by one pilot run of each count before the repeats" if meta.get("select") == "pilot"
              else "every count in every repeat") + ".\n",
           markdown(results, meta), "", "## Targets\n"]
    for r in results:
        t = r["targets"]
        nan = float("nan")
        out.append(f"- **{r['model']}**: FDG = **{t.get('fdg_over_bp_1thread', nan):.2f}x** BP with 1 thread "
                   f"(paired {t.get('fdg_over_bp_1thread_paired', nan):.2f}x; target 1.8x), "
                   f"**{t.get('fdg_over_best_pipelining', nan):.2f}x** the best torch.distributed.pipelining "
                   f"schedule (paired {t.get('fdg_over_best_pipelining_paired', nan):.2f}x; target 1.15x). Cut after block "
                   f"{r['cuts']['stash']['boundaries']} (DTRP {r['cuts']['recompute']['boundaries']}) of "
                   f"{r['cuts'].get('layers', '?')}; the per-layer costs predicted stages of "
                   f"{r['cuts']['stash'].get('stage_ms', '?')} ms (DTRP {r['cuts']['recompute'].get('stage_ms', '?')}).")
    for r in results:
        if r.get("pilot"):
            out.append(f"- {r['model']} pilot runs (img/s, one each): "
                       + ", ".join(f"`{k}` {v:.1f}" for k, v in r["pilot"].items()) + ".")
    out += ["", '("Paired": the median over repeats of the ratio within one repeat.)\n',
            "Where the speed-up over BP with 1 thread goes (`bench.decompose`; medians; product = speed-up): "
            "BP busy = BP's CPU / wall, work = BP's CPU / the stages' summed CPU per batch, balance = summed / "
            "busiest stage's CPU, busy = busiest stage's CPU / wall per batch.\n",
            "| model | contender | BP busy | work | balance | busy | speed-up | stage CPU ms/batch | wall ms/batch (BP) |",
            "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        for c in r["best"]:
            d = decompose(r, c)
            if d is None or c.startswith("bp_"):
                continue
            out.append(f"| {r['model']} | `{c}` | {d['bp_busy']:.2f} | {d['work']:.2f} | {d['balance']:.2f} | "
                       f"{d['busy']:.2f} | {d['speedup']:.2f} | {' / '.join(f'{x:.0f}' for x in d['cpu_ms'])} | "
                       f"{d['step_ms']:.0f} ({d['bp_step_ms']:.0f}) |")
    out += ["", NOTES_MARK, "", HOW]
    for r in results:
        out.append(f"## {r['model']}: every run\n")
        out.append(detail_table(r))
        out.append("")
    return "\n".join(out) + "\n"


NOTES_MARK = "<!-- notes: kept when the report is regenerated -->"


def write_report(path: str, results: list[dict], meta: dict) -> None:
    """Write the report, keeping any hand-written notes that follow NOTES_MARK up to the next heading."""
    text = report(results, meta)
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        old = ""
    if NOTES_MARK in old:
        notes = old.split(NOTES_MARK, 1)[1].split("\n## How it is measured", 1)[0].strip("\n")
        if notes:
            text = text.replace(NOTES_MARK, NOTES_MARK + "\n\n" + notes, 1)
    with open(path, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speed", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        return run_cli(a)
    except ValueError as e:
        print(f"speed: error: {e}", file=sys.stderr)
        return 2
