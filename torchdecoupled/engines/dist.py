"""The distributed engine: one process per stage (and per data-parallel replica) on torch.distributed.

Each process runs the simulator's loop for its own stage, ``for t in range(num_ticks): for a in
schedule.actions(t, k): worker.run(a)``, with the same ``Stage``, ``Worker`` and ``Schedule`` code;
activations go up and gradients go down as point-to-point messages (``dist_transport``). Nothing here
knows which method runs. Same seed, same data: every stage's parameters equal the simulator's bit
for bit (CPU, one thread per process, D = 1); see docs/distributed.md.

``run(job, specs, data, val)`` is the one entry (``Pipeline.fit`` calls it):

- ``rank = stage * D + replica`` (``dist_layout``);
- in a plain process it starts the K x D processes itself and waits for them (``dist_launch``): each
  gets its own stage's spec, rank 0 the data;
- under ``torchrun`` (RANK and WORLD_SIZE in the environment), or inside a process group the caller
  made, the calling process is one rank and runs its part; the world size must be K x D.
"""
from __future__ import annotations

import atexit
import copy
import os
import signal
import socket
import sys
from urllib.parse import urlparse

from .dist_job import DistJob
from .dist_launch import DistributedError, launch
from .dist_layout import Layout
from .dist_worker import FAULT_ENV, Fault, StageFailure, run_rank

BACKENDS = ("gloo", "nccl")
MAX_LOCAL_ENV = "TORCHDECOUPLED_MAX_PROCS"

__all__ = ["BACKENDS", "DistJob", "DistributedError", "agree_on_cuts", "joined", "max_local_processes", "run"]


def max_local_processes() -> int:
    """How many stage processes one machine may start: 8 per CPU (at least 16), or $TORCHDECOUPLED_MAX_PROCS."""
    env = os.environ.get(MAX_LOCAL_ENV)
    return int(env) if env else max(16, 8 * (os.cpu_count() or 1))


def joined() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when this process is one rank of a launched run, else None."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def agree_on_cuts(cuts: list[int], backend: str | None, device: str, init_method: str | None,
                  timeout: float) -> list[int]:
    """A measured partition (balance="time") differs from process to process: under torchrun every rank
    cuts where rank 0 measured (a gloo group for the exchange, or the caller's); elsewhere returns
    ``cuts``: a launcher measures once, in the caller."""
    if joined() is None:
        return list(cuts)
    import torch.distributed as dist
    join(backend, device, init_method, timeout)
    box = [list(cuts)]
    dist.broadcast_object_list(box, src=0, group=dist.new_group(backend="gloo"))
    return box[0]


def join(backend: str | None, device: str, init_method: str | None, timeout: float) -> None:
    """Under torchrun: join the default process group once for the life of this process (it is left at
    exit): a group destroyed and made again would read the first one's stale rendezvous keys in
    torchrun's store. The caller's own group, if it made one, is used as it is."""
    from datetime import timedelta

    import torch.distributed as dist
    if dist.is_initialized():
        return
    rank, size, _ = joined()
    dist.init_process_group(check_backend(backend, device), init_method=init_method or "env://", rank=rank,
                            world_size=size, timeout=timedelta(seconds=timeout))
    atexit.register(_leave)


def _leave() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


def run(job: DistJob, specs: list, data, val: list | None, on_epoch=None) -> dict:
    """Train ``job`` with one process per stage x replica. Returns rank 0's result (``StageProcess.finish``:
    records, every stage's state, peaks, idle fractions); under torchrun the other ranks get their own
    stage's state and the records. ``on_epoch(record)`` runs in this process as rank 0 writes each epoch's
    record (launcher, or rank 0 under torchrun; the other ranks get the records when the run ends)."""
    backend = check_backend(job.backend, job.device)
    fault = Fault.parse(os.environ.get(FAULT_ENV))
    world = job.world_size
    here = joined()
    if here is not None:
        rank, size, local_rank = here
        if size != world:
            raise ValueError(f"this run has {size} processes (WORLD_SIZE={size}) but {job.stages} stages x "
                             f"{job.replicas} replicas need {world}: launch with --nnodes x --nproc-per-node = {world}")
        layout = Layout(job.stages, job.replicas, rank)
        device = _device(job.device, local_rank)
        if device.startswith("cuda"):
            import torch
            torch.cuda.set_device(device)  # before NCCL's group is made
        join(backend, job.device, job.init_method, job.timeout)
        try:
            result = run_rank(job, layout, specs[layout.stage], device, backend, None,
                              None, fault, data if rank == 0 else None, val if rank == 0 else None,
                              on_epoch if rank == 0 else None)
        except StageFailure as e:
            if e.config_error:
                raise ValueError(e.config_error) from e
            print(f"torchdecoupled: {e}", file=sys.stderr, flush=True)
            if e.peer:
                _kill_stopped_siblings()
            raise
        return result
    if world > max_local_processes():
        raise ValueError(f"{job.stages} stages x {job.replicas} replicas = {world} processes is more than "
                         f"{max_local_processes()} on one machine (set {MAX_LOCAL_ENV} to allow more, or spread "
                         f"the ranks over machines with torchrun)")
    if job.init_method:
        check_init_method(job.init_method)
    import torch
    job.rng_state = torch.get_rng_state()  # an unseeded DataLoader shuffles in rank 0 as it would here
    payloads = (payload(job, specs[r // job.replicas], data if r == 0 else None, val if r == 0 else None)
                for r in range(world))
    return launch(job, payloads, [_device(job.device, r) for r in range(world)], backend, fault, on_epoch)


def _kill_stopped_siblings() -> None:
    """Under torchrun, SIGKILL the ranks on this machine that are stopped (SIGSTOP, a debugger): torchrun's
    SIGTERM cannot reach a stopped process, so it would wait its 30 s grace before ending the run. The
    siblings of a torchrun worker (the children of its agent) are the other ranks of this machine."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent, me = os.getppid(), os.getpid()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            if int(ppid) == parent and state in ("T", "t"):
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError):  # gone meanwhile, or not ours
            continue


def payload(job: DistJob, spec, data, val) -> bytes:
    """One rank's bytes: the job, its stage's spec (layers on the CPU: a CUDA tensor would come back on
    the device it left), and the data for rank 0. What cannot be pickled is named, with the fix."""
    import cloudpickle

    if any(p.is_cuda for p in spec.module.parameters()):
        spec = copy.copy(spec)
        spec.module = copy.deepcopy(spec.module).cpu()
        spec.head = copy.deepcopy(spec.head).cpu() if spec.head is not None else None
    try:
        return cloudpickle.dumps((job, spec, data, val), protocol=5)
    except Exception as e:  # noqa: BLE001 - find the part that fails and name it
        if isinstance(e, DistributedError):  # SIGTERM while pickling: the launcher's stop, not a bad part
            raise
        parts = {f"stage {spec.index}'s layers": spec.module, "the optimizer factory": spec.make_opt,
                 "the scheduler factory": spec.make_sched, "the criterion": spec.criterion,
                 f"stage {spec.index}'s head": spec.head, "the head factory": job.head, "the metrics": job.metrics,
                 "the training data": data, "the evaluation data": val}
        what = next((name for name, obj in parts.items() if not _picklable(obj)), "the job")
        raise ValueError(f"cannot send {what} to the stage processes ({type(e).__name__}: {e}): everything a stage "
                         f"process runs travels pickled (cloudpickle: functions, lambdas and classes of your script "
                         f"work; open files, locks, generators and live iterators do not); make it picklable, build "
                         f"it inside a factory, or use engine='sim'") from None


def _picklable(obj) -> bool:
    import cloudpickle
    try:
        cloudpickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001
        return False


def check_backend(backend: str | None, device: str) -> str:
    """The backend to use (default: nccl for cuda devices, else gloo), or a one-line error."""
    import torch

    backend = backend or ("nccl" if device.startswith("cuda") else "gloo")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (valid: {', '.join(BACKENDS)})")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA GPUs but torch.cuda.is_available() is False "
                         "(use --backend gloo on CPU)")
    if backend == "nccl" and not device.startswith("cuda"):
        raise ValueError(f"backend 'nccl' moves CUDA tensors only, but --device is {device!r} "
                         f"(use --device cuda, or --backend gloo)")
    return backend


def check_init_method(url: str) -> None:
    """A rendezvous the launcher can complete: a tcp:// one on this machine names a free port, a file://
    one a new file in a directory that exists (torch's FileStore would wait forever for a missing
    directory, and read a stale file's keys). Say so now rather than hang or fail later."""
    u = urlparse(url)
    if u.scheme not in ("tcp", "file", "env"):
        raise ValueError(f"bad --init-method {url!r} (valid: tcp://host:port, file:///path, env://)")
    if u.scheme == "file":
        _check_file_rendezvous(url, u.path)
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


def _check_file_rendezvous(url: str, path: str) -> None:
    if not path or path.endswith("/"):
        raise ValueError(f"bad --init-method {url!r}: file:// needs the path of a file, e.g. file:///tmp/rdv")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"--init-method {url}: no directory {folder!r} for the rendezvous file: create it, "
                         f"or choose a path in a directory that exists")
    if os.path.exists(path):
        raise ValueError(f"--init-method {url}: {path!r} already exists (a stale rendezvous file, left by an "
                         f"earlier run?): delete it, or choose a new path")


def _device(device: str, local_rank: int) -> str:
    """A rank's device: "cuda" means cuda:<local rank> (modulo the GPUs there are)."""
    if not device.startswith("cuda") or ":" in device:
        return device
    import torch
    return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
