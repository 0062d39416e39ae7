"""The distributed engine: one process per stage (and per data-parallel replica) on torch.distributed.

Each process runs the simulator's loop for its own stage, ``for t in range(num_ticks): for a in
schedule.actions(t, k): worker.run(a)``, with the same ``Stage``, ``Worker`` and ``Schedule`` code;
activations go up and gradients go down as point-to-point messages (``dist_transport``). Nothing here
knows which method runs. Same seed, same config: every stage's parameters equal the simulator's bit
for bit (CPU, one thread per process, D = 1); see docs/distributed.md.

- ``rank = stage * D + replica`` (``dist_worker``);
- on one machine ``train_dist`` starts the K x D processes itself (``dist_launch``);
- under ``torchrun`` (RANK and WORLD_SIZE in the environment) the calling process is one rank: it joins
  the process group from the environment (or ``cfg.init_method``) and runs its part; WORLD_SIZE must be
  K x D;
- rank 0 writes metrics.jsonl, summary.json, timeline.json and timeline.png (``dist_outputs``), and with
  ``--checkpoint`` the simulator's checkpoint file (``dist_checkpoint``; either engine resumes it).
"""
from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

from .. import checkpoint
from ..config import RunConfig
from .dist_launch import DistributedError, launch
from .dist_layout import Layout
from .dist_worker import FAULT_ENV, Fault, StageFailure, run_rank

BACKENDS = ("gloo", "nccl")
MAX_LOCAL_ENV = "TORCHDECOUPLED_MAX_PROCS"

__all__ = ["BACKENDS", "DistributedError", "train_dist", "max_local_processes"]


def max_local_processes() -> int:
    """How many stage processes one machine may start: 8 per CPU (at least 16), or $TORCHDECOUPLED_MAX_PROCS."""
    env = os.environ.get(MAX_LOCAL_ENV)
    return int(env) if env else max(16, 8 * (os.cpu_count() or 1))


def train_dist(cfg: RunConfig, *, return_state: bool = False):
    """Train with one process per stage x replica; returns the summary (also in cfg.out/summary.json).

    With ``return_state=True`` returns ``(summary, states)``: every stage's final ``state_dict`` (from
    replica 0), in stage order. Under torchrun, ranks other than 0 return None (or (None, None))."""
    cfg = cfg.resolved()
    backend = check_backend(cfg)
    if cfg.resume:  # a checkpoint of another run fails here, in one line, before any process starts
        path = checkpoint.in_dir(cfg.resume)
        cfg = checkpoint.check_config(checkpoint.read(path, map_location="cpu"), cfg, path)
    world = cfg.stages * cfg.replicas
    fault = Fault.parse(os.environ.get(FAULT_ENV))
    env = _torchrun_env()
    if env is not None:
        rank, size, local_rank = env
        if size != world:
            raise ValueError(f"torchrun started {size} processes (WORLD_SIZE={size}) but --stages {cfg.stages} x "
                             f"--replicas {cfg.replicas} needs {world}: launch with --nnodes x --nproc-per-node = {world}")
        layout = Layout(cfg.stages, cfg.replicas, rank)
        try:
            summary, states = run_rank(cfg, layout, _device(cfg, local_rank), backend,
                                       ("url", cfg.init_method or "env://"), None, fault, return_state)
        except StageFailure as e:
            if e.config_error:
                raise ValueError(e.config_error) from e
            print(f"torchdecoupled: {e}", file=sys.stderr, flush=True)
            raise
        _destroy()
        return (summary, states) if return_state else summary
    if world > max_local_processes():
        raise ValueError(f"--stages {cfg.stages} x --replicas {cfg.replicas} = {world} processes is more than "
                         f"{max_local_processes()} on one machine (set {MAX_LOCAL_ENV} to allow more, or spread "
                         f"the ranks over machines with torchrun)")
    if cfg.init_method:
        check_init_method(cfg.init_method)
    summary, states = launch(cfg, [_device(cfg, r) for r in range(world)], backend, fault, return_state)
    return (summary, states) if return_state else summary


def check_backend(cfg: RunConfig) -> str:
    """The backend to use (default: nccl for cuda devices, else gloo), or a one-line error."""
    import torch

    backend = cfg.backend or ("nccl" if cfg.device.startswith("cuda") else "gloo")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (valid: {', '.join(BACKENDS)})")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA GPUs but torch.cuda.is_available() is False "
                         "(use --backend gloo on CPU)")
    if backend == "nccl" and not cfg.device.startswith("cuda"):
        raise ValueError(f"backend 'nccl' moves CUDA tensors only, but --device is {cfg.device!r} "
                         f"(use --device cuda, or --backend gloo)")
    return backend


def check_init_method(url: str) -> None:
    """A tcp:// rendezvous on this machine must name a free port: say so now rather than hang or fail later."""
    u = urlparse(url)
    if u.scheme not in ("tcp", "file", "env"):
        raise ValueError(f"bad --init-method {url!r} (valid: tcp://host:port, file:///path, env://)")
    if u.scheme != "tcp":
        return
    if u.port is None or not u.hostname:
        raise ValueError(f"bad --init-method {url!r}: tcp:// needs a host and a port, e.g. tcp://127.0.0.1:29500")
    if u.hostname not in ("127.0.0.1", "localhost", "0.0.0.0", "::1", socket.gethostname()):
        return  # a remote rendezvous host: nothing to check here
    with socket.socket(socket.AF_INET6 if u.hostname == "::1" else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((u.hostname, u.port))
        except OSError as e:
            raise ValueError(f"port {u.port} on {u.hostname} is already in use (--init-method {url}: {e.strerror}); "
                             f"choose a free port, or leave --init-method out to get one") from None


def _torchrun_env() -> tuple[int, int, int] | None:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def _device(cfg: RunConfig, local_rank: int) -> str:
    if not cfg.device.startswith("cuda") or ":" in cfg.device:
        return cfg.device
    import torch
    return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"


def _destroy() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
