"""In the child processes: one rank of one run (BP, our distributed engine, torch.distributed.pipelining:
pipe.py), clocked at the start of every step (tick), reporting back over a pipe. Everything here is
module-level so that forkserver / spawn children can find it by its module path."""
from __future__ import annotations

import contextlib
import os
import pickle
import sys
import traceback

from . import workload
from .jobs import LR, MOMENTUM, OURS, SEED, WEIGHT_DECAY, Job
from .pipe import run_pipe


def _run_bp(job: Job, rank: int, rendezvous) -> dict:
    dataset = workload.data(job)
    batches, model = workload.batches(job, dataset), workload.model(job, dataset.num_classes)
    opt, criterion = workload.sgd(model.parameters()), workload.loss_fn(job)
    marks = []
    for b in range(job.first + job.steps):
        marks.append(workload.clock())
        x, y = batches.get(b)
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    marks.append(workload.clock())
    return {"marks": marks, "loss": float(loss.detach())}


class _TickClock:
    """Stands in for the engine's Schedule in ``StageProcess.train``: records the clocks at the start of
    every tick (``train`` asks ``schedule.actions(t, k)`` once per tick), delegates everything else."""

    def __init__(self, schedule):
        self._schedule, self.marks = schedule, []

    def __getattr__(self, name):
        return getattr(self._schedule, name)

    def actions(self, t: int, k: int):
        self.marks.append(workload.clock())
        return self._schedule.actions(t, k)


def _ours_config(job: Job):
    """The CLI's config of the run: "synthetic" images, or for a language model "text" (lm_loss, the
    tokens kept integers) with its recipe replaced by the benchmark's SGD, as every contender trains."""
    from ..config import RunConfig
    method, opts = OURS[job.contender]
    text = {"context": job.in_shape[0], "optimizer": "sgd", "lr_schedule": "cosine"} if job.lm else {}
    return RunConfig(method=method, method_opts=dict(opts), stages=job.stages,
                     dataset="text" if job.lm else "synthetic", model=job.model, model_opts=dict(job.model_opts),
                     epochs=1, batch_size=job.batch, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, seed=SEED,
                     partition=",".join(map(str, job.boundaries)), engine="dist", threads=1, progress=False,
                     timeout=job.timeout, **text)


def _run_ours(job: Job, rank: int, rendezvous) -> dict:
    """One rank of ``--engine dist``: the Pipeline's own job and stage spec (``Pipeline.dist_parts``) run by
    the engine's StageProcess, on the benchmark's data (the zoo's loader swapped for it, by name)."""
    from .. import data as data_mod
    from ..build import build_pipeline
    from ..engines.dist_layout import Layout
    from ..engines.dist_worker import StageProcess

    data_mod.DATASETS["text" if job.lm else "synthetic"] = lambda root, seed, **kw: workload.data(job)
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


RUNNERS = {"bp": _run_bp, "ours": _run_ours, "pipe": run_pipe}


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
        out["rss_mb"] = workload.peak_rss_mb()
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
