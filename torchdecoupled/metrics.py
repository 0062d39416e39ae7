"""Run outputs: metrics.jsonl (one JSON object per epoch), summary.json, and the parameter hash."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from typing import Sequence

import torch


def params_sha256(modules: Sequence[torch.nn.Module]) -> str:
    """SHA-256 over the bytes of all parameters, stage by stage, in order."""
    h = hashlib.sha256()
    for m in modules:
        for p in m.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def epoch_record(epoch: int, per_stage: Sequence[dict], evals: dict, elapsed: float, **extra) -> dict:
    """Merge what every stage collected in an epoch (stage order) with the evaluation. ``train_acc`` =
    correct / targets, only where the last stage counted targets (accuracy applies: Stage.collect)."""
    last = per_stage[-1]
    n = max(last.get("samples", 0), 1)
    acc = {"train_acc": last["correct"] / max(last["targets"], 1)} if "targets" in last else {}
    rec = {
        "epoch": epoch,
        "train_loss": last.get("loss_sum", float("nan")) / n,
        **acc,
        **evals,
        "staleness": {"mean": [s["tau_mean"] for s in per_stage], "max": [s["tau_max"] for s in per_stage]},
        "stored_bytes_peak": [s["peak_bytes"] for s in per_stage],
        "lr": [s["lr"] for s in per_stage],
        "time_s": round(elapsed, 3),
    }
    rec.update(extra)
    return rec


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "commit": git_commit()}


class MetricsWriter:
    def __init__(self, out: str | None, records: Sequence[dict] = ()):
        """Start metrics.jsonl afresh, holding ``records`` (the epochs before a resume)."""
        self.out = out
        if out:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, "metrics.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)

    def epoch(self, rec: dict) -> None:
        if self.out:
            with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")

    def summary(self, summary: dict) -> None:
        if self.out:
            write_summary(self.out, summary)


def write_summary(out: str, summary: dict) -> None:
    """out/summary.json."""
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar of ticks on stderr, or None."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="tick", leave=False, dynamic_ncols=True)
