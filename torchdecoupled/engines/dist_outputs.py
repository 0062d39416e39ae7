"""What rank 0 of the distributed engine writes: epoch records, summary.json, the timeline.

The records are the simulator's (``metrics.epoch_record``) merged over processes, plus each stage's
idle fraction (``idle_fraction``: the bubble, mean over the stage's replicas).
"""
from __future__ import annotations

import os

from ..metrics import epoch_record
from ..timeline import plot_gantt, write_chrome_trace


def _by_stage(items: list[dict], num_stages: int) -> list[list[dict]]:
    stages = [sorted((i for i in items if i["stage"] == k), key=lambda i: i["replica"]) for k in range(num_stages)]
    assert all(stages), "every stage reports"
    return stages


def merge_epoch(epoch: int, items: list[dict], num_stages: int, elapsed: float, unit: str | None = None) -> dict:
    """One epoch record from every process's ``{stage, replica, collect, eval, idle}``."""
    per_stage, idle = [], []
    for reps in _by_stage(items, num_stages):
        stats = [r["collect"] for r in reps]
        merged = dict(stats[0])
        merged["tau_mean"] = sum(s["tau_mean"] for s in stats) / len(stats)
        merged["tau_max"] = max(s["tau_max"] for s in stats)
        merged["peak_bytes"] = max(s["peak_bytes"] for s in stats)
        if "samples" in merged:  # a stage with a loss: replicas saw disjoint slices
            for key in ("loss_sum", "correct", "samples", "targets"):
                if key in merged:
                    merged[key] = sum(s[key] for s in stats)
        per_stage.append(merged)
        idle.append(round(sum(r["idle"] for r in reps) / len(reps), 4))
    evals = next(i["eval"] for i in items if i["eval"] is not None)
    return epoch_record(epoch, per_stage, evals, elapsed, unit=unit, idle_fraction=idle)


def gathered(items: list[dict], job, backend: str) -> dict:
    """Rank 0's view of the finished run: every stage's state (replica 0), peak stored bytes and idle
    fraction (mean over replicas); writes timeline.json and timeline.png into the run directory."""
    stages = _by_stage(items, job.stages)
    traces = [r["trace"] for reps in stages for r in reps]
    if job.out and job.trace:
        write_chrome_trace(os.path.join(job.out, "timeline.json"), traces)
        plot_gantt(os.path.join(job.out, "timeline.png"), traces,
                   title=f"{job.method.describe()}, K={job.stages}, D={job.replicas}: measured timeline "
                         f"(first ticks; full trace in timeline.json)")
    return {"states": [reps[0]["state"] for reps in stages],
            "peaks": [max(r["peak"] for r in reps) for reps in stages],
            "idle_fraction": [round(sum(r["trace"]["idle"] for r in reps) / len(reps), 4) for reps in stages],
            "backend": backend, "world_size": job.world_size}
