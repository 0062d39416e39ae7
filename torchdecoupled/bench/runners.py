"""In the child processes: one rank of one run (BP, our distributed engine, torch.distributed.pipelining),
clocked at the start of every step (tick), reporting back over a pipe. Everything here is module-level so
that forkserver / spawn children can find it by its module path."""
from __future__ import annotations

import contextlib
import os
import pickle
import resource
import sys
import time
import traceback

from .jobs import LR, MOMENTUM, OURS, PIPE, SEED, WEIGHT_DECAY, Job


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
    from ..data.synthetic import load_synthetic
    return load_synthetic(seed=SEED, in_shape=job.in_shape, n_train=job.num_batches * job.batch, n_test=job.batch)


def _batches(job: Job, data):
    from ..data.batches import Batches
    return Batches(data.train_x, data.train_y, job.batch, SEED)


def _model(job: Job, num_classes: int):
    import torch
    from ..models import build_model
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
    from ..config import RunConfig
    method, opts = OURS[job.contender]
    return RunConfig(method=method, method_opts=dict(opts), stages=job.stages, dataset="synthetic",
                     model=job.model, model_opts=dict(job.model_opts), epochs=1, batch_size=job.batch, lr=LR,
                     momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, seed=SEED,
                     partition=",".join(map(str, job.boundaries)), engine="dist", threads=1, progress=False,
                     timeout=job.timeout)


def _run_ours(job: Job, rank: int, rendezvous) -> dict:
    """One rank of ``--engine dist``: the Pipeline's own job and stage spec (``Pipeline.dist_parts``) run by
    the engine's StageProcess, on synthetic data of the right size."""
    from .. import data as data_mod
    from ..build import build_pipeline
    from ..engines.dist_layout import Layout
    from ..engines.dist_worker import StageProcess

    n_train = job.num_batches * job.batch  # the zoo loads "synthetic" by name: give it this size
    data_mod.DATASETS["synthetic"] = lambda root, seed, **kw: data_mod.load_synthetic(
        seed=seed, in_shape=job.in_shape, n_train=n_train, n_test=job.batch)
    pipe, _, batches = build_pipeline(_ours_config(job))
    run, specs = pipe.dist_parts(batches.per_epoch, 1)
    proc = StageProcess(run, Layout(job.stages, 1, rank), specs[rank], "cpu", "gloo", rendezvous,
                        data=batches if rank == 0 else None)
    clock = proc.schedule = _TickClock(proc.schedule)
    proc.train()
    rec = proc.recorder
    events = [(cat, t0 + rec.origin, t1 + rec.origin) for cat, _, _, t0, t1 in rec.events
              if cat in ("F", "B", "U", "wait", "send")]
    result = proc.finish()
    last = result["records"][-1] if result["records"] else {}
    return {"marks": clock.marks, "events": events, "loss": last.get("train_loss") if rank == 0 else None}


def _run_pipe(job: Job, rank: int, rendezvous) -> dict:
    """One rank of torch.distributed.pipelining: PipelineStage + ScheduleGPipe / Schedule1F1B."""
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
    from ..engines.dist_layout import Layout, init_process_group
    from ..partition import split

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
        with torch.no_grad():
            h = data.train_x[:1]
            for m in modules[:rank]:
                h = m.eval()(h)
                m.train()
        shape, dtype = tuple(h.shape[1:]), h.dtype
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
        from ..engines.malloc import ENV, keep_freed_memory
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
