"""Train a network with a decoupled method: the orchestration shared by the CLI and the Python API.

Batches stream across epochs (the pipeline is not flushed at an epoch boundary). Epoch e is evaluated
after the tick in which the last stage computes the loss of epoch e's last batch; the final epoch is
evaluated after the pipeline drains (every batch's gradient applied at every stage).
"""
from __future__ import annotations

import time

import torch

from . import checkpoint
from .build import Run, build_run, build_stage
from .config import RunConfig
from .engines.sim import evaluate, run_sim
from .metrics import MetricsWriter, epoch_record, machine, params_sha256
from .partition import cut_points
from .schedule import Schedule
from .transport import LocalTransport


def eval_ticks(schedule: Schedule, per_epoch: int, epochs: int) -> dict[int, int]:
    """tick -> epoch whose evaluation follows that tick."""
    ticks = {schedule.loss_tick((e + 1) * per_epoch - 1): e for e in range(epochs - 1)}
    ticks[schedule.num_ticks - 1] = epochs - 1
    return ticks


def summarize(run: Run, records: list[dict], modules, peak_bytes: list[int], elapsed: float, **extra) -> dict:
    cfg, last = run.config, records[-1]
    return {
        "method": run.method.describe(), "paper": run.method.paper, "engine": cfg.engine,
        "stages": cfg.stages, "model": cfg.model, "dataset": cfg.dataset, "epochs": cfg.epochs, "seed": cfg.seed,
        "test_acc": last["test_acc"], "test_loss": last["test_loss"], "train_loss": last["train_loss"],
        "params_sha256": params_sha256(modules), "peak_stored_bytes": peak_bytes,
        "boundaries": cut_points(run.modules),
        "delay": run.schedule.delays, "ticks": run.schedule.num_ticks, "time_s": round(elapsed, 3),
        "end_of_run": "drained", "config": cfg.__dict__, "machine": machine(), **extra,
    }


def progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="tick", leave=False, dynamic_ncols=True)


def train(cfg: RunConfig) -> dict:
    """Run one training job; returns the summary (also written to cfg.out/summary.json)."""
    cfg = cfg.resolved()
    if cfg.engine == "dist":
        from .engines.dist import train_dist
        return train_dist(cfg)
    torch.set_num_threads(cfg.threads or 1)  # one thread per stage worker: deterministic, as in dist
    state, path = None, None
    if cfg.resume:
        path = checkpoint.in_dir(cfg.resume)
        state = checkpoint.read(path, map_location=cfg.device)
        cfg = checkpoint.check_config(state, cfg, path)
    run = build_run(cfg)
    stages = [build_stage(run, k, cfg.device) for k in range(cfg.stages)]
    dtype = getattr(torch, cfg.dtype)
    test_x, test_y = run.dataset.test_x.to(dtype), run.dataset.test_y
    transport, first_tick, records = LocalTransport(), 0, []
    if state is not None:
        checkpoint.check_boundaries(state, run.modules, path, cfg.partition)
        last, records = checkpoint.restore(state, stages, transport)
        first_tick = last + 1
        del state
    writer = MetricsWriter(cfg.out, records)
    evals = eval_ticks(run.schedule, run.batches.per_epoch, cfg.epochs)
    bar = progress_bar(run.schedule.num_ticks - first_tick, cfg.progress, f"{cfg.method} K={cfg.stages}")
    start = time.perf_counter() - (records[-1]["time_s"] if records else 0.0)

    def on_tick(t: int) -> None:
        if bar is not None:
            bar.update(1)
        if t not in evals:
            return
        per_stage = [s.collect(evals[t]) for s in stages]
        rec = epoch_record(evals[t], per_stage, evaluate(stages, test_x, test_y), time.perf_counter() - start)
        records.append(rec)
        writer.epoch(rec)
        if cfg.checkpoint and t < run.schedule.num_ticks - 1:
            checkpoint.save(checkpoint.in_dir(cfg.out), stages, transport, t, records, cfg.__dict__,
                            cut_points(run.modules), run.batches.per_epoch)
        if bar is not None:
            bar.set_postfix(epoch=rec["epoch"], loss=f"{rec['train_loss']:.3f}", test_acc=f"{rec['test_acc']:.3f}")

    run_sim(stages, run.schedule, run.batches, on_tick=on_tick, transport=transport,
            ticks=range(first_tick, run.schedule.num_ticks))
    if bar is not None:
        bar.close()
    summary = summarize(run, records, [s.module for s in stages],
                        [s.telemetry.peak_bytes for s in stages], time.perf_counter() - start)
    writer.summary(summary)
    return summary
