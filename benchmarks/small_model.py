"""Seconds per epoch of a small model (MNIST-1D, cnn1d_bn, FDG) in the simulator and on the distributed
engine, K = 2 and 3, alternating, one thread per process: where the messages' latency, not the compute,
sets the pace.

    python benchmarks/small_model.py [--repeats 2] [--epochs 3]
"""
import argparse
import json
import os
import tempfile

import torch

from torchdecoupled.config import RunConfig
from torchdecoupled.metrics import machine
from torchdecoupled.run import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    for _ in range(a.repeats):
        for engine in ("sim", "dist"):
            for K in (2, 3):
                out = tempfile.mkdtemp()
                train(RunConfig(method="fdg", stages=K, dataset="mnist1d", epochs=a.epochs, engine=engine,
                                progress=False, trace=False, out=out))
                with open(os.path.join(out, "metrics.jsonl")) as f:
                    last = json.loads(f.readlines()[-1])
                print(f"{engine} K={K}: {last['time_s'] / a.epochs:.3f} s/epoch (80 batches of 50)")
    m = machine()
    print(f"machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, commit {m['commit']}")


if __name__ == "__main__":
    main()
