"""Soak: the distributed engine killed and resumed again and again, at seeded random moments, must end with
the weights of an undisturbed run of the same configuration (``params_sha256`` in summary.json).

A cycle is one run: each round starts it (``--resume`` once it has a checkpoint), waits for its stage
processes and a seeded random 0-3 s more, then either SIGKILLs a random stage process, or sends SIGTERM or SIGINT to the launcher, until a round's
run ends by itself; its weights are compared with the undisturbed run's, and the next cycle starts afresh.
When the time is used up the last cycle resumes to its end. Every round checks that no process of the run
is left behind and that the run's exit was the documented one.

    python benchmarks/soak.py                       # 600 s, K = 3 x 2 replicas, 30 epochs a run
    python benchmarks/soak.py --seconds 60 --doc docs/soak.md
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from torchdecoupled.metrics import machine

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# the exits each fault may end with: SIGTERM outside the launcher's watch (loading the data before the stage
# processes start, writing the summary after they end) ends the process as SIGTERM does by default (-15)
EXPECTED = {"kill-stage": (1,), "term-launcher": (1, -15), "int-launcher": (130,)}


def _default_sigint() -> None:
    """A process started in the background (``cmd &``, nohup) inherits SIGINT ignored, and Python then
    keeps it ignored: give the run the default, as a terminal's Ctrl-C would find it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_argv(out: str, a) -> list[str]:
    return [sys.executable, "-m", "torchdecoupled", "train", "--dataset", "mnist1d", "--model", "mlp", "--epochs",
            str(a.epochs), "--batch-size", "50", "--stages", str(a.stages), "--replicas", str(a.replicas),
            "--engine", "dist", "--lr", "0.05", "--lr-schedule", "none", "--dtype", "float64", "--no-progress",
            "--no-trace", "--checkpoint", "--out", out, "--timeout", "10"]


def _kids() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _tree(pid: int) -> set[int]:
    kids, out, todo = _kids(), set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return {p for p in out if _alive(p)}


def _stages(pid: int) -> list[int]:
    kids = _kids()
    servers = [c for c in kids.get(pid, []) if b"forkserver" in open(f"/proc/{c}/cmdline", "rb").read()]
    return sorted(p for s in servers for p in kids.get(s, []) if _alive(p))


def round_(out: str, a, rng: random.Random, first: bool) -> dict:
    """One start (or resume) with one fault; returns what happened."""
    cmd = run_argv(out, a) + ([] if first else ["--resume", out])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_default_sigint)
    fault, deadline = rng.choice(sorted(EXPECTED)), time.monotonic() + 60
    while len(_stages(proc.pid)) < a.stages * a.replicas and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # every stage process started: the fault lands in set-up or in training
    time.sleep(rng.uniform(0.0, 3.0))
    everyone, stages = _tree(proc.pid), _stages(proc.pid)
    sent = time.monotonic()
    if proc.poll() is not None:
        fault = "none (the run ended first)"
    elif fault == "kill-stage":
        os.kill(rng.choice(stages), signal.SIGKILL) if stages else proc.send_signal(signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGTERM if fault.startswith("term") else signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in everyone) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = sorted(p for p in everyone if _alive(p))
    return {"fault": fault, "code": proc.returncode, "stop_s": round(took, 2), "left": left,
            "last": (err.strip().splitlines() or [""])[-1][:200]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0, help="how long to keep killing and resuming")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--epochs", type=int, default=30, help="epochs of each run (80 batches each)")
    p.add_argument("--doc", help="write the result as Markdown to this file")
    a = p.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="torchdecoupled-soak-")
    undisturbed = run_to_end(os.path.join(work, "undisturbed"), a, resume=False)
    start, rounds, hashes = time.monotonic(), [], []
    while time.monotonic() - start < a.seconds:  # a cycle: one run, killed and resumed until it ends
        out = os.path.join(work, f"cycle{len(hashes)}")
        while time.monotonic() - start < a.seconds:
            r = round_(out, a, rng, first=not os.path.exists(os.path.join(out, "checkpoint.pt")))
            rounds.append(r)
            print(json.dumps(r), flush=True)
            if r["code"] == 0:
                break
        done = os.path.exists(os.path.join(out, "summary.json")) and rounds[-1]["code"] == 0
        hashes.append((run_to_end(out, a, resume=True) if not done else _summary(out))["params_sha256"])
    same = all(h == undisturbed["params_sha256"] for h in hashes)
    bad = [x for x in rounds if x["left"] or (x["fault"] in EXPECTED and x["code"] not in EXPECTED[x["fault"]])]
    report(a, rounds, bad, same, hashes, undisturbed, time.monotonic() - start)
    raise SystemExit(0 if same and not bad else 1)


def _summary(out: str) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def run_to_end(out: str, a, resume: bool) -> dict:
    r = subprocess.run(run_argv(out, a) + (["--resume", out] if resume else []), cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_default_sigint)
    if r.returncode != 0:
        raise SystemExit(f"{'resuming' if resume else 'the undisturbed run'} failed (exit {r.returncode}): "
                         f"{r.stderr[-2000:]}")
    return _summary(out)


def report(a, rounds, bad, same, hashes, undisturbed, disturbed_s) -> None:
    m = machine()
    faults = {f: sum(r["fault"] == f for r in rounds) for f in EXPECTED}
    cmd = "python benchmarks/soak.py" + "".join(f" --{k} {v}" for k, v in (("seconds", f"{a.seconds:g}"), (
        "seed", a.seed), ("stages", a.stages), ("replicas", a.replicas), ("epochs", a.epochs)))
    lines = [
        "# Soak: kill and resume the distributed engine, again and again", "",
        f"Command: `{cmd}{' --doc ' + a.doc if a.doc else ''}`  ",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}; commit "
        f"{m['commit']}.", "",
        f"MNIST-1D MLP, K = {a.stages} x {a.replicas} replicas ({a.stages * a.replicas} stage processes), "
        f"{a.epochs} epochs of 80 batches, a checkpoint after every epoch, --timeout 10.", "",
        f"- {disturbed_s:.0f} s of kill-and-resume: {len(hashes)} runs, each killed and resumed until it ended "
        f"(a run still going when the time was up resumed to its end); {len(rounds)} starts and resumes; "
        f"faults: {faults['kill-stage']} SIGKILL to a random stage process, "
        f"{faults['term-launcher']} SIGTERM and {faults['int-launcher']} SIGINT to the launcher.",
        f"- Every fault ended the run with its documented exit (1; 1, or -15 outside the launcher's watch; 130): "
        f"{'yes' if not bad else f'no, {len(bad)} did not: ' + json.dumps(bad[:3])}; processes left behind: "
        f"{sum(len(r['left']) for r in rounds)}; longest stop {max(r['stop_s'] for r in rounds):.2f} s.",
        f"- Every run's final weights equal the undisturbed run's: **{'yes' if same else 'no'}** "
        f"({sum(h == undisturbed['params_sha256'] for h in hashes)} of {len(hashes)}; params_sha256 "
        f"{undisturbed['params_sha256'][:16]}...).", "",
    ]
    print("\n".join(lines))
    if a.doc:
        with open(a.doc, "w") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
