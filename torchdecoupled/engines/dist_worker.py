"""One process of the distributed engine: one replica of one stage, run tick by tick.

Every process builds the whole run deterministically (``build_run``, same seed), keeps its own stage
(``rank = stage * D + replica``, see ``dist_layout``), and loads the data it needs itself: stage 0 its
batches' inputs, the last stage (and local-learning stages) their labels, each replica its slice. Then
it runs exactly the simulator's loop::

    for t in range(schedule.num_ticks):
        for a in schedule.actions(t, k):
            worker.run(a)            # the same Worker and Stage as engines/sim.py; recv blocks

After each evaluation tick (``train.eval_ticks``) every process collects its telemetry, replica 0 of
every stage evaluates the test set as a pipeline (stage 0 sends chunks up as ``eval`` messages, the
last stage computes loss and accuracy as ``engines.sim.evaluate`` does), and rank 0 gathers the
per-process results and writes the epoch record; with ``--checkpoint`` (all but the last evaluation
tick) rank 0 then writes the checkpoint, and ``--resume`` starts after its tick (``dist_checkpoint``).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..build import build_run, build_stage
from ..config import RunConfig
from ..methods import get_method
from ..metrics import MetricsWriter
from ..partition import cut_points
from ..timeline import Recorder
from ..worker import Worker
from . import dist_checkpoint
from .dist_layout import Layout, ReplicaBatches, collective, grad_averager, init_process_group
from .dist_plan import MessagePlan, feature_shapes
from .dist_transport import DistTransport, PeerError
from .malloc import keep_freed_memory

EVAL_BATCH = 1000  # test chunk size, as in engines.sim.evaluate
FAULT_ENV = "TORCHDECOUPLED_FAULT"
FAULT_KINDS = ("exit", "kill", "raise", "stop")


@dataclass(frozen=True)
class Fault:
    """Test-only fault injection, ``TORCHDECOUPLED_FAULT="stage:tick:kind"``: at the start of that tick
    every replica of that stage does ``exit`` (os._exit(3)), ``kill`` (SIGKILL itself), ``raise``
    (RuntimeError) or ``stop`` (SIGSTOP itself: alive but silent)."""
    stage: int
    tick: int
    kind: str

    @staticmethod
    def parse(spec: str | None) -> "Fault | None":
        if not spec:
            return None
        try:
            stage, tick, kind = spec.split(":")
            fault = Fault(int(stage), int(tick), kind)
        except ValueError:
            fault = None
        if fault is None or fault.kind not in FAULT_KINDS:
            raise ValueError(f"bad {FAULT_ENV}={spec!r} (want stage:tick:kind, kind one of {', '.join(FAULT_KINDS)})")
        return fault

    def fire(self) -> None:
        if self.kind == "exit":
            os._exit(3)
        if self.kind == "raise":
            raise RuntimeError(f"injected fault ({FAULT_ENV}={self.stage}:{self.tick}:{self.kind})")
        os.kill(os.getpid(), signal.SIGKILL if self.kind == "kill" else signal.SIGSTOP)


def agree_on_partition(cfg: RunConfig, layout: Layout):
    """A measured partition ("time") would differ from process to process: rank 0 measures, and every
    rank cuts where rank 0 did. Returns (config with explicit boundaries, rank 0's run or None)."""
    spec = cfg.partition or get_method(cfg.method, **cfg.method_opts).partition
    if spec != "time" or cfg.stages == 1:
        return cfg, None
    run = build_run(cfg) if layout.rank == 0 else None
    box = [cut_points(run.modules) if run is not None else None]
    collective("agreeing on the measured partition", dist.broadcast_object_list, box, src=0)
    return dataclasses.replace(cfg, partition=",".join(map(str, box[0]))), run


class StageProcess:
    """Builds this rank's stage and runs its part of the schedule; ``tick`` says where it is."""

    def __init__(self, cfg: RunConfig, layout: Layout, device: str, backend: str,
                 rendezvous: tuple[str, object], progress=None, fault: Fault | None = None):
        self.cfg, self.layout, self.progress, self.tick = cfg, layout, progress, -1
        self.fault = fault if fault is not None and fault.stage == layout.stage else None
        k, D = layout.stage, layout.replicas
        torch.set_num_threads(cfg.threads or 1)
        keep_freed_memory()  # no page faults in the steady state (engines/malloc.py)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        init_process_group(backend, layout, rendezvous, cfg.timeout)
        cfg, run = agree_on_partition(cfg, layout)
        self.cfg = cfg
        self.run = run = run or build_run(cfg)
        bs, n = run.batches.batch_size, len(run.batches.x)
        smallest = min(bs, n - (run.batches.per_epoch - 1) * bs)
        if D > smallest:
            raise ValueError(f"--replicas {D} needs at least {D} samples in every batch, but the last batch of an "
                             f"epoch has {smallest} (change --batch-size)")
        from ..train import eval_ticks
        self.evals = eval_ticks(run.schedule, run.batches.per_epoch, cfg.epochs)
        self.schedule = run.schedule
        dtype = getattr(torch, cfg.dtype)
        self.test_x, self.test_y = run.dataset.test_x.to(dtype), run.dataset.test_y
        state = dist_checkpoint.read(cfg, run, device) if cfg.resume else None
        self.first_tick = state["tick"] + 1 if state is not None else 0  # resumed after the checkpoint's tick
        plan = MessagePlan(run.schedule, self.evals, feature_shapes(run.modules, run.batches.x), run.batches,
                           layout.replica, D, len(self.test_x), EVAL_BATCH, start=self.first_tick)
        self.stage = build_stage(run, k, device)
        groups = [dist.new_group(layout.ranks_of_stage(s)) if D > 1 else None for s in range(cfg.stages)]
        if D > 1:
            self.stage.grad_sync = grad_averager(groups[k], D)
        received = dist_checkpoint.restore(state, layout, self.stage) if state is not None else {}
        self.recorder = Recorder(enabled=cfg.trace)
        comm = device if backend == "nccl" else "cpu"
        self.transport = DistTransport(plan, k, layout.replica, cfg.stages, D, timeout=cfg.timeout, device=comm,
                                       on_wait=self.recorder.wait, received=received)
        self.worker = Worker(self.stage, self.schedule, ReplicaBatches(run.batches, layout.replica, D),
                             self.transport)
        self.records: list[dict] = list(state["records"]) if state is not None else []
        self.writer = MetricsWriter(cfg.out if layout.rank == 0 else None, self.records)

    def train(self) -> None:
        evals, k, rec, clock = self.evals, self.layout.stage, self.recorder, time.perf_counter_ns
        bar = self._bar()
        collective("the start barrier", dist.barrier)
        rec.start()
        self.start = time.perf_counter() - (self.records[-1]["time_s"] if self.records else 0.0)
        for t in range(self.first_tick, self.schedule.num_ticks):
            self.tick = rec.tick = t
            if self.progress is not None:
                self.progress[self.layout.rank] = t
            if self.fault is not None and self.fault.tick == t:
                self.fault.fire()
            for a in self.schedule.actions(t, k):
                t0 = clock()
                self.worker.run(a)
                rec.action(a.op, str(a), t0, clock())
            if bar is not None:
                bar.update(1)
            if t in evals:
                self.end_epoch(evals[t], bar)
        if bar is not None:
            bar.close()
        self.tick = self.schedule.num_ticks  # finishing
        self.transport.close()

    def _bar(self):
        if not (self.cfg.progress and self.layout.rank == 0):
            return None
        from ..train import progress_bar
        return progress_bar(self.schedule.num_ticks - self.first_tick, True,
                            f"{self.cfg.method} K={self.cfg.stages} dist")

    def end_epoch(self, epoch: int, bar=None) -> None:
        """Collect, evaluate, gather on rank 0, checkpoint (drawn as one "eval" span; not counted in the
        idle fraction)."""
        idle = self.recorder.close_window()
        t0 = time.perf_counter_ns()
        mine = {"stage": self.layout.stage, "replica": self.layout.replica, "collect": self.stage.collect(epoch),
                "eval": self.evaluate(epoch), "idle": idle}
        everyone = [None] * self.layout.world_size if self.layout.rank == 0 else None
        collective(f"gathering epoch {epoch}'s results", dist.gather_object, mine, everyone, dst=0)
        if everyone is not None:
            from .dist_outputs import merge_epoch
            rec = merge_epoch(epoch, everyone, self.cfg.stages, time.perf_counter() - self.start)
            self.records.append(rec)
            self.writer.epoch(rec)
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{rec['train_loss']:.3f}", test_acc=f"{rec['test_acc']:.3f}")
        if self.cfg.checkpoint and self.tick < self.schedule.num_ticks - 1:  # as the simulator: not the last
            dist_checkpoint.save(self, self.tick)
        self.recorder.span("eval", f"eval {epoch}", t0, time.perf_counter_ns())
        self.recorder.open_window()

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict | None:
        """Replica 0's pipelined share of engines.sim.evaluate; the last stage returns the result."""
        if self.layout.replica != 0:
            return None
        k, s, tr = self.layout.stage, self.stage, self.transport
        n = len(self.test_x)
        starts = range(0, n, EVAL_BATCH)
        loss, correct = 0.0, 0
        for i, lo in enumerate(starts):
            seq = epoch * len(starts) + i
            h = self.test_x[lo:lo + EVAL_BATCH] if k == 0 else tr.recv(("eval", k - 1, k, seq))
            h = s.predict(h)
            if not s.is_last:
                tr.send(("eval", k, k + 1, seq), h)
                continue
            y = self.test_y[lo:lo + EVAL_BATCH].to(h.device)
            loss += torch.nn.functional.cross_entropy(h.float(), y, reduction="sum").item()
            correct += int((h.argmax(1) == y).sum())
        return {"test_loss": loss / n, "test_acc": correct / n} if s.is_last else None

    def finish(self, return_state: bool = False):
        """Gather parameters, peaks and timelines on rank 0, which writes the outputs and returns
        (summary, per-stage state dicts if asked); the other ranks return (None, None)."""
        first = self.layout.replica == 0
        mine = {"stage": self.layout.stage, "replica": self.layout.replica,
                "params": [p.detach().cpu() for p in self.stage.module.parameters()] if first else None,
                "state": {n: t.detach().cpu() for n, t in self.stage.module.state_dict().items()}
                if first and return_state else None,
                "peak": self.stage.telemetry.peak_bytes,
                "trace": self.recorder.export(stage=self.layout.stage, replica=self.layout.replica,
                                              rank=self.layout.rank)}
        everyone = [None] * self.layout.world_size if self.layout.rank == 0 else None
        collective("gathering the final parameters", dist.gather_object, mine, everyone, dst=0)
        summary, states = None, None
        if everyone is not None:
            from .dist_outputs import write_outputs
            summary = write_outputs(self.run, self.writer, self.records, everyone, time.perf_counter() - self.start,
                                    backend=dist.get_backend())
            if return_state:
                states = [e["state"] for e in sorted(everyone, key=lambda e: e["stage"]) if e["replica"] == 0]
        return summary, states


class StageFailure(RuntimeError):
    """A stage process failed; the message names the stage, the rank and the tick. ``peer`` is True when
    the cause is another process (it died, or stayed silent past the timeout); ``config_error`` holds the
    message of a ValueError raised while setting up (a bad configuration, the same on every rank)."""

    def __init__(self, message: str, peer: bool = False, config_error: str | None = None):
        super().__init__(message)
        self.peer, self.config_error = peer, config_error


def run_rank(cfg: RunConfig, layout: Layout, device: str, backend: str, rendezvous: tuple[str, object],
             progress=None, fault: Fault | None = None, return_state: bool = False):
    """This rank's whole run; returns (summary, per-stage state dicts or None); raises StageFailure."""
    proc = None
    try:
        proc = StageProcess(cfg, layout, device, backend, rendezvous, progress, fault)
        proc.train()
        return proc.finish(return_state)
    except Exception as e:
        if proc is None:
            where = "during setup"
        elif proc.tick >= proc.schedule.num_ticks:
            where = "while finishing"
        else:
            where = f"at tick {proc.tick}" if proc.tick >= 0 else "before tick 0"
        bad_config = str(e) if proc is None and isinstance(e, ValueError) else None
        raise StageFailure(f"{layout.name()} failed {where}: {type(e).__name__}: {e}",
                           peer=isinstance(e, PeerError), config_error=bad_config) from e
