"""Shared helpers of the distributed-engine tests: a tiny run, the simulator's reference, process checks."""
import dataclasses
import functools
import os

import torch

from torchdecoupled.config import RunConfig
from torchdecoupled.train import train


def tiny_cfg(method="fdg", stages=2, **kw) -> RunConfig:
    """MNIST-1D, a 4-block MLP, 2 epochs of 10 batches: a dist run takes well under a second once warm."""
    base = dict(method=method, stages=stages, dataset="mnist1d", model="mlp", model_opts={"hidden": (32, 32, 32)},
                epochs=2, batch_size=400, lr=0.1, dtype="float64", engine="dist", progress=False, timeout=20.0)
    base.update(kw)
    return RunConfig(**base)


def sim_of(cfg: RunConfig) -> RunConfig:
    return dataclasses.replace(cfg, engine="sim", replicas=1, out=None)


@functools.lru_cache(maxsize=None)
def _sim_summary(cfg_json: str) -> dict:
    import json
    cfg = RunConfig(**json.loads(cfg_json))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same as one stage process
    try:
        return train(cfg)
    finally:
        torch.set_num_threads(threads)


def sim_summary(cfg: RunConfig) -> dict:
    return _sim_summary(sim_of(cfg).to_json())


def descendants(pid: int | None = None) -> set[int]:
    """Every live process below pid (default: this one), from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [pid or os.getpid()]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo.extend(kids)
    return out


def forkserver_pid() -> int | None:
    from multiprocessing import forkserver
    return getattr(forkserver._forkserver, "_forkserver_pid", None)


def stage_processes() -> set[int]:
    """Live descendants of this process other than the forkserver itself (i.e. stage processes)."""
    fs = forkserver_pid()
    return {p for p in descendants() if p != fs and _ppid(p) == fs} if fs else set()


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
