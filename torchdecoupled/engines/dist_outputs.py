"""What rank 0 of the distributed engine writes: epoch records, summary.json, the timeline.

The records are the simulator's (``metrics.epoch_record``, ``train.summarize``) merged over processes,
plus each stage's idle fraction (``idle_fraction``: the bubble, mean over the stage's replicas).
"""
from __future__ import annotations

import os

from ..metrics import MetricsWriter, epoch_record
from ..timeline import plot_gantt, write_chrome_trace


def _by_stage(items: list[dict], num_stages: int) -> list[list[dict]]:
    stages = [sorted((i for i in items if i["stage"] == k), key=lambda i: i["replica"]) for k in range(num_stages)]
    assert all(stages), "every stage reports"
    return stages


def merge_epoch(epoch: int, items: list[dict], num_stages: int, elapsed: float) -> dict:
    """One epoch record from every process's ``{stage, replica, collect, eval, idle}``."""
    per_stage, idle = [], []
    for reps in _by_stage(items, num_stages):
        stats = [r["collect"] for r in reps]
        merged = dict(stats[0])
        merged["tau_mean"] = sum(s["tau_mean"] for s in stats) / len(stats)
        merged["tau_max"] = max(s["tau_max"] for s in stats)
        merged["peak_bytes"] = max(s["peak_bytes"] for s in stats)
        if "samples" in merged:  # a stage with a loss: replicas saw disjoint slices
            for key in ("loss_sum", "correct", "samples"):
                merged[key] = sum(s[key] for s in stats)
        per_stage.append(merged)
        idle.append(round(sum(r["idle"] for r in reps) / len(reps), 4))
    evals = next(i["eval"] for i in items if i["eval"] is not None)
    return epoch_record(epoch, per_stage, evals, elapsed, idle_fraction=idle)


class _Params:
    """Stands in for a stage module in metrics.params_sha256: the gathered parameters, in order."""

    def __init__(self, params):
        self._params = params

    def parameters(self):
        return iter(self._params)


def write_outputs(run, writer: MetricsWriter, records: list[dict], items: list[dict], elapsed: float,
                  backend: str) -> dict:
    """summary.json, timeline.json and timeline.png in cfg.out (the epochs are written as they come);
    returns the summary."""
    from ..train import summarize

    cfg = run.config
    stages = _by_stage(items, cfg.stages)
    traces = [r["trace"] for reps in stages for r in reps]
    summary = summarize(run, records, [_Params(reps[0]["params"]) for reps in stages],
                        [max(r["peak"] for r in reps) for reps in stages], elapsed,
                        replicas=cfg.replicas, world_size=cfg.stages * cfg.replicas, backend=backend,
                        rank_layout="rank = stage * replicas + replica",
                        idle_fraction=[round(sum(r["trace"]["idle"] for r in reps) / len(reps), 4)
                                       for reps in stages])
    writer.summary(summary)
    if cfg.out and cfg.trace:
        write_chrome_trace(os.path.join(cfg.out, "timeline.json"), traces)
        plot_gantt(os.path.join(cfg.out, "timeline.png"), traces,
                   title=f"{cfg.method}, K={cfg.stages}, D={cfg.replicas}: measured timeline "
                         f"(first ticks; full trace in timeline.json)")
    return summary
