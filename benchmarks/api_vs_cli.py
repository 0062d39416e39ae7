"""Images/s of the same training through the Python API and through the CLI, side by side in one run.

Both train ResNet-20 (CIFAR-shaped synthetic data, batch 128, SGD) with FDG, K = 2 stage processes of
one thread each (engine "dist"). The CLI side is ``torchdecoupled.run.train(RunConfig(...))``; the API
side is a user's script: the zoo model built by hand, ``td.Pipeline(..., engine="dist")`` with lambda
factories and a shuffled ``DataLoader``. Runs alternate (API, CLI, API, ...) and the medians are
reported. Two clocks per run: ``train`` is rank 0's time from the start barrier to the end of the epoch
(metrics.jsonl ``time_s``: training and the one evaluation of 128 images), ``fit`` the whole call as the
user waits for it (process start, sending each stage its layers, the start-up agreement, training).

    python benchmarks/api_vs_cli.py                       # writes docs/api_vs_cli.md
    python benchmarks/api_vs_cli.py --batches 8 --repeats 1 --doc -   # a quick look, printed
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import torchdecoupled as td
from torchdecoupled import data as data_mod
from torchdecoupled.config import RunConfig
from torchdecoupled.metrics import machine
from torchdecoupled.models import build_model
from torchdecoupled.run import train

BATCH, LR, MOMENTUM, WD = 128, 0.1, 0.9, 5e-4


def _data(batches: int):
    return data_mod.load_synthetic(seed=0, in_shape=(3, 32, 32), n_train=batches * BATCH, n_test=BATCH)


def _epoch_time(out: str) -> float:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return json.loads(f.readlines()[-1])["time_s"]


def run_cli(batches: int, out: str) -> tuple[float, float]:
    data_mod.DATASETS["synthetic"] = lambda root, seed, **kw: _data(batches)
    cfg = RunConfig(method="fdg", stages=2, dataset="synthetic", model="resnet20", epochs=1, batch_size=BATCH,
                    lr=LR, momentum=MOMENTUM, weight_decay=WD, lr_schedule="none", engine="dist", threads=1,
                    progress=False, trace=False, out=out, timeout=120)
    t0 = time.perf_counter()
    train(cfg)
    return _epoch_time(out), time.perf_counter() - t0


def run_api(batches: int, out: str) -> tuple[float, float]:
    data = _data(batches)
    torch.manual_seed(0)
    model = build_model("resnet20", 10, (3, 32, 32))
    loader = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    pipe = td.Pipeline(model, "fdg", 2, engine="dist", threads=1, trace=False, timeout=120,
                       optimizer=lambda p: torch.optim.SGD(p, lr=LR, momentum=MOMENTUM, weight_decay=WD))
    pipe.fit(loader, epochs=1, val_data=(data.test_x, data.test_y), progress=False, out=out)
    return _epoch_time(out), time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=32, help="batches of 128 in the epoch (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved (default 3)")
    p.add_argument("--doc", default="docs/api_vs_cli.md", help="markdown file to write, or - to print")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = {"API": [], "CLI": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for name, fn in (("API", run_api), ("CLI", run_cli)):
                runs[name].append(fn(a.batches, os.path.join(tmp, f"{name}{i}")))
                print(f"{name} run {i}: train {runs[name][-1][0]:.2f} s, fit {runs[name][-1][1]:.2f} s", file=sys.stderr)
    images = a.batches * BATCH
    rows = {}
    for name, r in runs.items():
        train_s, fit_s = statistics.median(x for x, _ in r), statistics.median(y for _, y in r)
        rows[name] = (images / train_s, images / fit_s, [round(images / x, 1) for x, _ in r])
    ratio = rows["API"][0] / rows["CLI"][0]
    m = machine()
    lines = [
        "# The Python API and the CLI: the same speed",
        "",
        f"ResNet-20, FDG, K = 2 stage processes x 1 thread, batch {BATCH}, {a.batches} batches of synthetic "
        f"CIFAR-shaped data, SGD; {a.repeats} runs of each, interleaved, medians. Both go through "
        "`Pipeline.fit` on the distributed engine: the CLI builds the Pipeline from its configuration, the "
        "API run is a user's script (its own factories, a shuffled DataLoader). Both use the default "
        "partition (balanced parameter counts, which leaves stage 0 most of ResNet-20's compute) and count the "
        "pipeline's fill and drain: the steady-state speed with time-balanced cuts is in speed.md.",
        "",
        "| path | images/s (training) | images/s (whole fit: start-up included) | every run (training) |",
        "|---|---|---|---|",
        *[f"| {n} | {t:.1f} | {f:.1f} | {', '.join(map(str, each))} |" for n, (t, f, each) in rows.items()],
        "",
        f"API / CLI (training): {ratio:.3f}.",
        "",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}; commit {m['commit']}.",
        f"Command: `python benchmarks/api_vs_cli.py --batches {a.batches} --repeats {a.repeats}`.",
        "",
    ]
    text = "\n".join(lines)
    if a.doc == "-":
        print(text)
    else:
        with open(a.doc, "w") as f:
            f.write(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
