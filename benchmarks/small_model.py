"""Seconds per epoch of a small model (MNIST-1D, cnn1d_bn, FDG) in the simulator and on the distributed
engine, K = 2 and 3, alternating, one thread per process: where the messages' latency, not the compute,
sets the pace. ``--against DIR`` runs the same, interleaved, with another checkout of torchdecoupled (its
package directory's parent), e.g. a ``git worktree`` of an older commit.

    python benchmarks/small_model.py [--repeats 2] [--epochs 3] [--against /tmp/old]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from torchdecoupled.metrics import machine

RUN = """
import json, os, sys, torch
from torchdecoupled.config import RunConfig
try:
    from torchdecoupled.run import train
except ImportError:  # a checkout from before run.py
    from torchdecoupled.train import train
torch.set_num_threads(1)
engine, K, epochs, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
train(RunConfig(method="fdg", stages=K, dataset="mnist1d", epochs=epochs, engine=engine, progress=False,
                trace=False, out=out))
with open(os.path.join(out, "metrics.jsonl")) as f:
    print(json.loads(f.readlines()[-1])["time_s"] / epochs)
"""


def seconds_per_epoch(source: str | None, engine: str, K: int, epochs: int) -> float:
    """One run in a fresh process (cwd: a temporary directory, so ``source`` is the code it imports)."""
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = source
    with tempfile.TemporaryDirectory() as tmp:
        p = subprocess.run([sys.executable, "-c", RUN, engine, str(K), str(epochs), os.path.join(tmp, "run")],
                           capture_output=True, text=True, cwd=tmp, env=env, check=True)
    return float(p.stdout.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--against", metavar="DIR", help="another checkout to run side by side")
    a = p.parse_args()
    sources = [("this", None)] + ([("against", os.path.abspath(a.against))] if a.against else [])
    for _ in range(a.repeats):
        for engine in ("sim", "dist"):
            for K in (2, 3):
                for name, src in sources:
                    s = seconds_per_epoch(src, engine, K, a.epochs)
                    print(f"{name:<8} {engine} K={K}: {s:.3f} s/epoch (80 batches of 50)", flush=True)
    m = machine()
    print(f"machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, commit {m['commit']}"
          + (f"; against {a.against}" if a.against else ""))


if __name__ == "__main__":
    main()
