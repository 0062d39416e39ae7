"""Shared parts of the fault matrix (test_fault_matrix.py): a checkpointed CLI run in a child process, its
process tree read from /proc (the launcher, the forkserver, the stage processes in rank order), a signal at
a seeded random moment of the run, and the resume that must end with the uninterrupted run's weights."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(__file__), "..")
TIMEOUT_S = 5  # --timeout: how long a stage waits on a silent peer


def _default_sigint() -> None:
    """A process started in the background (``cmd &``, nohup) inherits SIGINT ignored, and Python then
    keeps it ignored: give the run the default, as a terminal's Ctrl-C would find it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def argv(out: str, stages: int, replicas: int, engine: str, epochs: int = 6) -> list[str]:
    """A checkpointed MNIST-1D MLP run: 40 batches per epoch, an epoch in a fraction of a second."""
    return [sys.executable, "-m", "torchdecoupled", "train", "--dataset", "mnist1d", "--model", "mlp", "--epochs",
            str(epochs), "--batch-size", "100", "--stages", str(stages), "--engine", engine, "--replicas",
            str(replicas), "--lr", "0.05", "--lr-schedule", "none", "--dtype", "float64", "--no-progress",
            "--no-trace", "--checkpoint", "--out", out, "--timeout", str(TIMEOUT_S)]


def state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""  # gone


def alive(pids) -> set[int]:
    return {p for p in pids if state(p) not in ("", "Z", "X")}


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return alive(out)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stage_pids(launcher: int) -> list[int]:
    """The stage processes (children of the launcher's forkserver), in rank order (they start in order)."""
    kids = _children()
    servers = [c for c in kids.get(launcher, []) if "forkserver" in _cmdline(c)]
    return sorted(p for s in servers for p in kids.get(s, []) if state(p) not in ("", "Z"))


def wait_for(predicate, seconds: float, what: str, proc=None) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}: {proc.communicate()}")
        if time.monotonic() > end:
            raise AssertionError(f"no {what} within {seconds} s")
        time.sleep(0.02)


def interrupt(out: str, stages: int, replicas: int, engine: str, sig: signal.Signals, victim: str,
              seed: int) -> dict:
    """Start the run, wait for its first checkpoint, then a seeded random 0-0.5 s, then send ``sig`` to the
    ``victim`` ("launcher", or "stage": a random stage process). A stopped launcher gets SIGCONT after 1 s.
    Returns what happened: exit code, stderr, seconds from the signal to the exit, leftover processes."""
    rng = random.Random(seed)
    proc = subprocess.Popen(argv(out, stages, replicas, engine), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_default_sigint)
    try:
        wait_for(lambda: os.path.exists(os.path.join(out, "checkpoint.pt")), 120, "first checkpoint", proc)
        if engine == "dist":
            wait_for(lambda: len(stage_pids(proc.pid)) == stages * replicas, 30, "stage processes", proc)
        time.sleep(rng.uniform(0, 0.5))
        everyone = tree(proc.pid) | {proc.pid}
        rank = None
        if victim == "stage":
            ranks = stage_pids(proc.pid)
            rank = rng.randrange(len(ranks))
            target = ranks[rank]
        else:
            target = proc.pid
        sent = time.monotonic()
        os.kill(target, sig)
        if sig == signal.SIGSTOP and victim == "launcher":
            time.sleep(1.0)
            os.kill(target, signal.SIGCONT)
        _, err = proc.communicate(timeout=TIMEOUT_S + 60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    end = time.monotonic() + 5  # helpers (forkserver, resource tracker) end once the launcher has gone
    while alive(everyone - {proc.pid}) and time.monotonic() < end:
        time.sleep(0.05)
    return {"code": proc.returncode, "stderr": err, "seconds": took, "rank": rank,
            "left": sorted(alive(everyone - {proc.pid}))}


def resume(out: str, stages: int, replicas: int, engine: str) -> dict:
    """``--resume out`` to the end; returns summary.json."""
    r = subprocess.run(argv(out, stages, replicas, engine) + ["--resume", out], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_default_sigint)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def reference(out: str, stages: int, replicas: int, engine: str) -> str:
    """The uninterrupted run's params_sha256."""
    r = subprocess.run(argv(out, stages, replicas, engine), cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_default_sigint)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)["params_sha256"]
