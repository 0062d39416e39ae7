"""Shared helpers of the distributed-engine tests: a tiny run, the simulator's reference, process checks."""
import dataclasses
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import torch

from torchdecoupled.config import RunConfig
from torchdecoupled.run import train


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


def sim(cfg: RunConfig, **kw) -> dict:
    """The simulator in this process, one thread (as one stage process); ``kw`` replaces config fields."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(dataclasses.replace(cfg, engine="sim", replicas=1, **kw))
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


TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def torchrun_two_nodes(args: list[str]) -> list[str]:
    """Run `torchrun --nnodes 2 --nproc-per-node 1 python <args>` twice on 127.0.0.1 (node ranks 0 and 1),
    as two machines would; assert both exit 0; return their outputs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TORCHDECOUPLED_FAULT")}
    logs = [tempfile.TemporaryFile(mode="w+") for _ in (0, 1)]  # files, not pipes: never a full pipe
    nodes = [subprocess.Popen([TORCHRUN, "--nnodes", "2", "--node-rank", str(n), "--nproc-per-node", "1",
                               "--master-addr", "127.0.0.1", "--master-port", str(port), *args],
                              env=env, stdout=logs[n], stderr=subprocess.STDOUT, text=True)
             for n in (0, 1)]
    try:
        for p in nodes:
            p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in nodes:
            p.kill()
            p.wait()
    outs = []
    for log in logs:
        log.seek(0)
        outs.append(log.read())
        log.close()
    report = "\n".join(f"--- node {n} (exit {p.returncode}):\n{out}" for n, (p, out) in enumerate(zip(nodes, outs)))
    assert [p.returncode for p in nodes] == [0, 0], report
    return outs
