"""Run outputs: the epoch record, metrics.jsonl (one JSON object per epoch) with metrics.csv and TensorBoard
beside it (logs.py), summary.json, the parameter hash, and the progress shown while a run trains. The JSON
files are strict JSON: a value that is not finite (nan, inf) is written as null (``finite.json_safe``)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from typing import Sequence

import torch
from tqdm import tqdm

from .finite import json_safe
from .logs import CsvLog, TensorBoardLog


def params_sha256(modules: Sequence[torch.nn.Module]) -> str:
    """SHA-256 over the bytes of all parameters, stage by stage, in order."""
    h = hashlib.sha256()
    for m in modules:
        for p in m.parameters():
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def lm_keys(unit: str | None) -> tuple[str, ...]:
    """The language-model fields of an epoch record with tokens of ``unit`` (None: none)."""
    if unit is None:
        return ()
    return tuple(f"{split}_{name}" for split in ("train", "test") for name in (f"bits_per_{unit}", "perplexity"))


def _lm_fields(rec: dict, unit: str) -> dict:
    """Bits per token (``bits_per_<unit>`` = loss / ln 2) and perplexity (exp loss) of each split's mean loss
    per token (natural log)."""
    out = {}
    for split in ("train", "test"):
        loss = rec.get(f"{split}_loss")
        if isinstance(loss, float) and math.isfinite(loss):
            out[f"{split}_bits_per_{unit}"] = loss / math.log(2)
            out[f"{split}_perplexity"] = math.exp(min(loss, 700.0))
    return out


def epoch_record(epoch: int, per_stage: Sequence[dict], evals: dict, elapsed: float, unit: str | None = None,
                 **extra) -> dict:
    """Merge what every stage collected in an epoch (stage order) with the evaluation. ``train_acc`` =
    correct / targets, only where the last stage counted targets (accuracy applies: Stage.collect).
    ``unit``: a language model's token ("byte"): adds bits per token and perplexity (``lm_keys``)."""
    last = per_stage[-1]
    n = max(last.get("samples", 0), 1)
    acc = {"train_acc": last["correct"] / max(last["targets"], 1)} if "targets" in last else {}
    rec = {
        "epoch": epoch,
        "train_loss": last.get("loss_sum", float("nan")) / n,
        **acc,
        **evals,
        **(_lm_fields({"train_loss": last.get("loss_sum", float("nan")) / n, **evals}, unit) if unit else {}),
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
    """A run directory's per-epoch files: metrics.jsonl and metrics.csv, and with ``tensorboard=True``
    TensorBoard event files in ``out/tensorboard/`` (needs the ``tensorboard`` package). ``out=None``
    writes nothing (a process that is not rank 0)."""

    def __init__(self, out: str | None, records: Sequence[dict] = (), tensorboard: bool = False):
        """Start the files afresh, holding ``records`` (the epochs before a resume): now if there are any,
        else at the first epoch (a run that fails before it leaves no empty files)."""
        self.out, self.csv, self.tensorboard, self.first = out, None, None, list(records)
        if out:
            os.makedirs(out, exist_ok=True)
            if records:
                self._start()
            if tensorboard:
                self.tensorboard = TensorBoardLog(os.path.join(out, "tensorboard"), records)

    def _start(self) -> None:
        """metrics.jsonl (written whole: tmp + rename) and metrics.csv, holding the epochs so far."""
        write_atomic(os.path.join(self.out, "metrics.jsonl"), "".join(_line(r) for r in self.first))
        self.csv = CsvLog(os.path.join(self.out, "metrics.csv"), self.first)

    def epoch(self, rec: dict) -> None:
        """Append the epoch's line (one write) and row; the first epoch of a fresh run writes the files."""
        if not self.out:
            return
        if self.csv is None:
            self.first.append(rec)
            self._start()
        else:
            with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
                f.write(_line(rec))
            self.csv.epoch(rec)
        if self.tensorboard is not None:
            self.tensorboard.epoch(rec)

    def close(self) -> None:
        """Close the TensorBoard writer (every epoch is on disk already)."""
        if self.tensorboard is not None:
            self.tensorboard.close()


def _line(rec: dict) -> str:
    return json.dumps(json_safe(rec), allow_nan=False) + "\n"


def write_summary(out: str, summary: dict) -> None:
    """out/summary.json, written whole (``write_atomic``)."""
    write_atomic(os.path.join(out, "summary.json"), json.dumps(json_safe(summary), indent=2, allow_nan=False))


def write_atomic(path: str, text: str) -> None:
    """Write ``path`` through a temporary file renamed over it: a reader (or a run killed mid-write) sees
    the old file or the new one, never a part; the temporary file never stays behind."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def progress_bar(total: int, enabled: bool, desc: str, epochs: int | None = None, stream=None):
    """Progress on ``stream`` (default stderr): a tqdm bar of ticks on a terminal, else (a log file, CI) one
    plain line per epoch; None if not enabled. Both take ``update(ticks)``, ``epoch(rec)`` after every
    epoch, ``set_postfix(epoch=..., **fields)`` and ``close()``. ``epochs``: the run's total, for
    ``epoch 2/40``."""
    if not enabled:
        return None
    stream = sys.stderr if stream is None else stream
    if _isatty(stream):
        return _Bar(total, desc, epochs, stream)
    return EpochLines(desc, epochs, stream)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class _Bar(tqdm):
    def __init__(self, total: int, desc: str, epochs: int | None, stream):
        super().__init__(total=total, desc=desc, unit="tick", leave=False, dynamic_ncols=True, file=stream)
        self.epochs = epochs

    def epoch(self, rec: dict) -> None:
        of = f"/{self.epochs}" if self.epochs else ""
        self.set_postfix(epoch=f"{rec['epoch'] + 1}{of}", loss=f"{rec['train_loss']:.3f}")


class EpochLines:
    """Progress where carriage returns would pile up: one line per epoch, e.g.
    ``fdg K=3 epoch 2/40 train_loss 0.512 test_acc 0.871 12.3 s``."""

    FIELDS = ("train_loss", "test_loss", "test_acc")

    def __init__(self, desc: str, epochs: int | None, stream):
        self.desc, self.epochs, self.stream = desc, epochs, stream
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        """Ticks count only on a terminal's bar."""

    def epoch(self, rec: dict) -> None:
        fields = {k: rec[k] for k in self.FIELDS if isinstance(rec.get(k), (int, float))}
        self.set_postfix(epoch=rec["epoch"], seconds=rec.get("time_s"), **fields)

    def set_postfix(self, epoch: int, seconds: float | None = None, **fields) -> None:
        """Print one line: ``epoch`` is 0-based (printed 1-based, as ``epoch 1/40``), ``seconds`` the run's
        clock (default: since this object was made)."""
        of = f"/{self.epochs}" if self.epochs else ""
        shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()]
        took = time.perf_counter() - self.start if seconds is None else seconds
        print(" ".join([self.desc, f"epoch {epoch + 1}{of}", *shown, f"{took:.1f} s"]), file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to clear: every line is final."""
