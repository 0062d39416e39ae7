"""One process of the distributed engine: one replica of one stage, run tick by tick.

A process holds its own stage only (``StageSpec``: its layers, head, the user's factories; ``rank =
stage * D + replica``, see ``dist_layout``). Rank 0 reads the training data and sends each process its
part (``dist_feed``); at start-up the processes agree on what crosses each boundary (``dist_setup``).
Then every process runs exactly the simulator's loop::

    for t in range(schedule.num_ticks):
        for a in schedule.actions(t, k):
            worker.run(a)            # the same Worker and Stage as engines/sim.py; recv blocks

After each evaluation tick (``schedule.eval_ticks``) every process collects its telemetry, replica 0 of
every stage evaluates the evaluation data as a pipeline (stage 0 sends chunks up as ``eval`` messages,
the last stage computes the criterion and the metrics as ``engines.sim.evaluate`` does), and rank 0
gathers the per-process results and writes the epoch record; with a checkpoint (after every evaluation
tick) rank 0 then writes the checkpoint, and a resumed run starts after its tick, or runs a finished
run's added epochs (``dist_checkpoint``, ``resume``). At the end rank 0 gathers every stage's state
(``checkpoint.stage_state``).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import checkpoint, resume
from ..boundary import to_device
from ..evaluation import EvalSum
from ..heads import build_head
from ..metrics import MetricsWriter, progress_bar
from ..schedule import Schedule, eval_ticks
from ..stagespec import StageSpec
from ..timeline import Recorder
from ..worker import Worker
from . import dist_checkpoint
from .dist_feed import Needs, ReaderFeed, RemoteFeed
from .dist_job import DistJob
from .dist_layout import Layout, collective, grad_averager, init_process_group
from .dist_plan import MessagePlan
from .dist_setup import agree_boundaries, share_eval
from .dist_transport import PREFETCH, DistTransport, PeerError
from .malloc import keep_freed_memory

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


def param_shapes(schedule: Schedule, stage) -> dict:
    """MAN's "param" messages, by sender: this stage's first layer (sent down) and, from the head's EMA, the
    layer of the stage above (received); {} without parameter messages."""
    k, K = stage.index, schedule.num_stages
    if not schedule.params:
        return {}
    out = {k: stage.param_shapes()} if k > 0 else {}
    if k < K - 1:
        if not hasattr(stage.head, "next_shapes"):
            raise TypeError(f"stage {k}: method {stage.method.name!r} sends the next stage's parameters to the "
                            f"auxiliary head, but {type(stage.head).__name__} has no next_shapes(): use a MAN head")
        out[k + 1] = stage.head.next_shapes()
    return out


def first_batch_after(schedule: Schedule, tick: int) -> int:
    """The first batch any action after ``tick`` touches (a resumed run's reader starts there: a message
    about a batch in flight needs that batch's size)."""
    bs = [a.batch for t in range(tick + 1, min(tick + 1 + 4 * schedule.num_stages, schedule.num_ticks))
          for k in range(schedule.num_stages) for a in schedule.actions(t, k) if a.op in "FB"]
    return min(bs, default=schedule.num_batches)


class StageProcess:
    """Builds this rank's stage and runs its part of the schedule; ``tick`` says where it is."""

    def __init__(self, job: DistJob, layout: Layout, spec: StageSpec, device: str, backend: str,
                 rendezvous: tuple[str, object] | None, progress=None, fault: Fault | None = None,
                 data=None, val: list | None = None, on_record=None):
        self.job, self.layout, self.progress, self.tick = job, layout, progress, -1
        self.on_record = on_record  # rank 0: called with each epoch record as it is written
        self.fault = fault if fault is not None and fault.stage == layout.stage else None
        k, D, K, m = layout.stage, layout.replicas, job.stages, job.method
        torch.set_num_threads(job.threads)
        if job.rng_state is not None:
            torch.set_rng_state(job.rng_state)
        keep_freed_memory()  # no page faults in the steady state (engines/malloc.py)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        if rendezvous is not None:
            init_process_group(backend, layout, rendezvous, job.timeout)
        group = dist.new_group(backend="gloo")  # the data messages' own channel (dist_feed)
        state = dist_checkpoint.read(job, device) if job.resume else None
        begin = resume.start(state, job.epochs, m)  # the launcher checked it: the same answer in every rank
        self.first_epoch, self.first_tick = begin.first_epoch, begin.first_tick
        epochs = job.epochs - self.first_epoch  # of this schedule
        self.schedule = schedule = Schedule(m.family, K, epochs * job.per_epoch, m.order, m.accumulate,
                                            m.param_messages)
        self.evals = eval_ticks(schedule, job.per_epoch, epochs)
        self.lookahead = PREFETCH + K + 4
        N = schedule.num_batches
        # a checkpoint after the last tick has nothing left to run: the feed reads the last batch, unused
        first_b = min(first_batch_after(schedule, self.first_tick - 1), N - 1)
        if layout.rank == 0:
            self.feed = ReaderFeed(data, layout, Needs(layout, m.family == "local"), group, N, self.lookahead,
                                   start=first_b, timeout=job.timeout)
        else:
            self.feed = RemoteFeed(layout, group, N, job.timeout, start=first_b, lag=self.lookahead - (K - 1))
        module = spec.module.to(device)
        first_x = self.feed.peek_input() if layout.rank == 0 else None
        self.boundaries, input_shape = agree_boundaries(layout, module, first_x, group, device, spec.precision)
        self.input_shape = input_shape
        eval_sizes, self.val_x, self.val_y = share_eval(layout, val, group)
        self.eval_chunks = len(eval_sizes)
        head = spec.head
        if head is None and m.family == "local" and k < K - 1:
            shape, dtype = self.boundaries[k].leaves[0]
            dtype = torch.float32 if spec.precision == "bf16" else dtype  # its master weights, as the stage's
            head = build_head(job.head or m.head, k, K, shape, input_shape, job.num_classes, job.seed, device, dtype)
        self.stage = spec.with_head(head.to(device) if head is not None else None).build(schedule, job.per_epoch)
        groups = [dist.new_group(layout.ranks_of_stage(s)) if D > 1 else None for s in range(K)]
        if D > 1:
            self.stage.grad_sync = grad_averager(groups[k], D)
        received = dist_checkpoint.restore(state, layout, self.stage) if state is not None else {}
        self.feed.at_tick(self.first_tick)  # rank 0 sends the first batches: the receives below need their sizes
        plan = MessagePlan(schedule, self.evals, self.boundaries, self.feed.size, eval_sizes, layout.replica,
                           start=self.first_tick, carries_input=self.stage.carries_input,
                           param_shapes=param_shapes(schedule, self.stage))
        self.recorder = Recorder(enabled=job.trace)
        comm = device if backend == "nccl" else "cpu"
        self.transport = DistTransport(plan, k, layout.replica, K, D, timeout=job.timeout, device=comm,
                                       on_wait=self.recorder.wait, received=received)
        self.worker = Worker(self.stage, schedule, self.feed, self.transport)
        self.records: list[dict] = list(state["records"]) if state is not None else list(job.records)
        self.writer = MetricsWriter(job.out if layout.rank == 0 else None, self.records, tensorboard=job.tensorboard)

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
            self.feed.at_tick(t)
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
        self.writer.close()
        self.tick = self.schedule.num_ticks  # finishing
        self.transport.close()
        self.feed.close()

    def _bar(self):
        if not (self.job.progress and self.layout.rank == 0):
            return None
        return progress_bar(self.schedule.num_ticks - self.first_tick, True,
                            f"{self.job.method.name} K={self.job.stages} dist", epochs=self.job.epochs)

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
            rec = merge_epoch(self.first_epoch + epoch, everyone, self.job.stages, time.perf_counter() - self.start,
                              self.job.token_unit)
            self.records.append(rec)
            self.writer.epoch(rec)
            if self.on_record is not None:
                self.on_record(rec)
            if bar is not None:
                bar.epoch(rec)
        if self.job.checkpoint:
            dist_checkpoint.save(self, self.tick)
        self.recorder.span("eval", f"eval {epoch}", t0, time.perf_counter_ns())
        self.recorder.open_window()

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict | None:
        """Replica 0's pipelined share of engines.sim.evaluate; the last stage returns the result."""
        if self.layout.replica != 0:
            return None
        k, s, tr, n = self.layout.stage, self.stage, self.transport, self.eval_chunks
        total = EvalSum(s.criterion, self.job.metrics) if s.is_last else None
        for i in range(n):
            seq = epoch * n + i
            h = self.val_x[i] if k == 0 else tr.recv(("eval", k - 1, k, seq))
            h = s.predict(h)
            if s.is_last:
                total.add(h, to_device(self.val_y[i], s.device))
            else:
                tr.send(("eval", k, k + 1, seq), h)
        if total is None:
            return None
        return total.result() if n else {}

    def finish(self) -> dict:
        """Gather every stage's state, peak and timeline on rank 0 and share the history with every
        process; rank 0 returns everything, the others their own stage's state and the history."""
        first = self.layout.replica == 0
        own = checkpoint.map_tensors(lambda t: t.detach().cpu(), checkpoint.stage_state(self.stage))
        mine = {"stage": self.layout.stage, "replica": self.layout.replica, "state": own if first else None,
                "peak": self.stage.telemetry.peak_bytes,
                "trace": self.recorder.export(stage=self.layout.stage, replica=self.layout.replica,
                                              rank=self.layout.rank)}
        everyone = [None] * self.layout.world_size if self.layout.rank == 0 else None
        collective("gathering the final state", dist.gather_object, mine, everyone, dst=0)
        box = [self.records]
        collective("sharing the history", dist.broadcast_object_list, box, src=0)
        result = {"records": box[0], "stage": self.layout.stage, "state": own, "boundaries": self.boundaries,
                  "input_shape": self.input_shape, "time_s": time.perf_counter() - self.start}
        if everyone is not None:
            from .dist_outputs import gathered
            result.update(gathered(everyone, self.job, backend=dist.get_backend()))
        return result


class StageFailure(RuntimeError):
    """A stage process failed; the message names the stage, the rank and the tick. ``peer`` is True when
    the cause is another process (it died, or stayed silent past the timeout); ``config_error`` holds the
    message of a ValueError raised while setting up (a bad configuration, the same on every rank)."""

    def __init__(self, message: str, peer: bool = False, config_error: str | None = None):
        super().__init__(message)
        self.peer, self.config_error = peer, config_error


def run_rank(job: DistJob, layout: Layout, spec: StageSpec, device: str, backend: str, rendezvous,
             progress=None, fault: Fault | None = None, data=None, val: list | None = None, on_record=None) -> dict:
    """This rank's whole run; returns ``StageProcess.finish``'s result; raises StageFailure."""
    proc = None
    try:
        proc = StageProcess(job, layout, spec, device, backend, rendezvous, progress, fault, data, val, on_record)
        proc.train()
        return proc.finish()
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
