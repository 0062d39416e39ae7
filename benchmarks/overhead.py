"""Where the engine's CPU per batch goes, beyond the model's own forward and backward: measured per stage, in
CPU time of one thread (``time.thread_time_ns``), which load from other processes on the machine disturbs far
less than wall time. Cases: ResNet-20 (batch 128, CIFAR-shaped synthetic data) FDG with K = 2, in the simulator
and on the distributed engine (2 processes x 1 thread); cnn1d_bn on MNIST-1D (batch 50) BP with K = 1 and 3 in
the simulator; each against a plain PyTorch loop (forward, loss, backward, SGD step) of the same model and data.

    python benchmarks/overhead.py [--repeats 5] [--batches 10] [--cases resnet20,cnn1d_k1,cnn1d_k3,resnet20_dist]
                                  [--doc docs/speed.md]

What is measured (medians over repeats, spread = min-max; the cases of a repeat in a rotating order):

- engine: each stage's CPU over all its actions of a batch (F, B, U), mean over the batches after ``--warmup``;
- model ops: the same stage modules run plainly (forward, backward with the same gradient, SGD step) on the
  same inputs: what BP also does; the plain loop runs the whole model the same way; both run in the same
  process batch by batch between the engine's ticks (this machine's speed drifts by 10-40 % within a
  minute: only a comparison within the same seconds holds);
- components, timed inside an instrumented run (its timers cost a few microseconds per call): the weight
  snapshot and its substitution into the module, the RNG fork, the non-finite checks, the stored-bytes
  bookkeeping (the saved-tensor hooks run at the first forward of each input shape only), the data feed,
  accuracy telemetry; and, at batch 2 where the model's ops cost little, the fixed cost of
  ``torch.autograd.grad`` over ``backward`` at the stages that run on a snapshot (differences of medians of
  200 calls; the other stages backward into ``p.grad`` as a plain loop does);
- distributed: the main thread's CPU per tick of each stage process (``bench.runners``, malloc "all"), its
  message sends and receives and data feed, and the CPU of its other threads (gloo's).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead_report import CASES, MARK, TIMED, dist_table, sim_table, write_doc  # noqa: E402



class Meter:
    """Thread-CPU nanoseconds per component, on while ``on``."""
    def __init__(self):
        self.ns, self.on = dict.fromkeys(TIMED, 0), False

    def timed(self, name, fn):
        def wrapper(*a, **kw):
            if not self.on:
                return fn(*a, **kw)
            t0 = time.thread_time_ns()
            try:
                return fn(*a, **kw)
            finally:
                self.ns[name] += time.thread_time_ns() - t0
        return wrapper

    def timed_cm(self, name, cm_fn):
        meter = self

        @contextlib.contextmanager
        def wrapper(*a, **kw):
            t0 = time.thread_time_ns()
            cm = cm_fn(*a, **kw)
            value = cm.__enter__()
            meter.ns[name] += (time.thread_time_ns() - t0) if meter.on else 0
            try:
                yield value
            finally:
                t1 = time.thread_time_ns()
                cm.__exit__(*sys.exc_info())
                meter.ns[name] += (time.thread_time_ns() - t1) if meter.on else 0
        return wrapper


def instrument(meter: Meter) -> None:
    """Wrap the engine's components (in this process only) with the meter's timers."""
    from torchdecoupled import stage, substitute, worker
    from torchdecoupled.engines import dist_feed, dist_transport
    S = stage.Stage
    S._rng = meter.timed_cm("rng fork", S._rng)
    S._snapshot_params = meter.timed("snapshot", S._snapshot_params)
    S._track_bytes = meter.timed("stored-bytes bookkeeping", S._track_bytes)
    stage.saved_bytes = meter.timed_cm("stored-bytes bookkeeping", stage.saved_bytes)
    stage.require_finite = meter.timed("non-finite checks", stage.require_finite)
    stage.accuracy_counts = meter.timed("accuracy telemetry", stage.accuracy_counts)
    substitute.Slots.substituted = meter.timed_cm("weight substitution", substitute.Slots.substituted)
    worker.Worker._batch = meter.timed("data feed", worker.Worker._batch)
    for cls in (dist_feed.ReaderFeed, dist_feed.RemoteFeed):
        cls.at_tick = meter.timed("data feed", cls.at_tick)
    T = dist_transport.DistTransport
    T.send, T.recv = meter.timed("messages sent", T.send), meter.timed("messages received", T.recv)


def build(case: str, batches: int):
    from torchdecoupled import data as data_mod
    from torchdecoupled.build import build_run, build_stage
    from torchdecoupled.config import RunConfig
    from torchdecoupled.data.synthetic import load_synthetic
    fields = CASES[case]
    if fields["dataset"] == "synthetic":
        data_mod.DATASETS["synthetic"] = lambda root, seed, **kw: load_synthetic(
            seed=0, in_shape=(3, 32, 32), n_train=batches * fields["batch_size"], n_test=fields["batch_size"])
    run = build_run(RunConfig(**fields, epochs=1, seed=0, progress=False))
    plain = copy.deepcopy(torch.nn.Sequential(*run.modules))  # before the stages take the modules
    return run, [build_stage(run, k) for k in range(len(run.modules))], plain


def engine_cpu(stages, schedule, batches, warmup: int, between=None) -> list[float]:
    """Each stage's CPU ms per batch: all its actions of batch b, mean over b >= warmup; ``between(t)`` runs
    after each tick t (the plain loops, interleaved batch by batch, so that both see the machine alike)."""
    from torchdecoupled.engines.sim import SharedBatches
    from torchdecoupled.schedule import run_tick
    from torchdecoupled.transport import LocalTransport
    from torchdecoupled.worker import Worker
    transport, shared = LocalTransport(), SharedBatches(batches, len(stages) + 1)  # as engines.sim.run_sim
    workers = [Worker(s, schedule, shared, transport) for s in stages]
    spent = [dict() for _ in stages]

    def run(a):
        t0 = time.thread_time_ns()
        workers[a.stage].run(a)
        b = a.batch if a.batch is not None else stages[a.stage]._last_backward
        spent[a.stage][b] = spent[a.stage].get(b, 0) + time.thread_time_ns() - t0
    for t in range(schedule.num_ticks):
        run_tick(schedule, t, lambda a: workers[a.stage].ready(a), run)
        if between is not None:
            between(t)
    n = schedule.num_batches
    return [sum(d.get(b, 0) for b in range(warmup, n)) / (n - warmup) / 1e6 for d in spent]


def stage_inputs(plain, x, y):
    """Each stage's input (a leaf) and the gradient that reaches its output, from one plain pass."""
    xs, outs, h = [], [], x
    for m in plain:
        h = h.detach().requires_grad_(bool(xs))
        xs.append(h)
        h = m(h)
        outs.append(h)
    torch.nn.functional.cross_entropy(h, y).backward()
    for k in range(len(xs) - 2, -1, -1):  # stage by stage, as the pipeline passes gradients down
        outs[k].backward(xs[k + 1].grad)
    grads = [xs[k + 1].grad for k in range(len(xs) - 1)] + [None]
    return [t.detach() for t in xs], grads


class PlainLoop:
    """A plain loop, one batch per ``step(b)``: the whole model, its batch read included (split False: one
    number), or each stage module on its own inputs and output gradients (the model's ops; one per stage)."""

    def __init__(self, modules, opt_of, batches, warmup: int, split: bool):
        self.modules, self.batches, self.warmup, self.split = modules, batches, warmup, split
        self.opts = [opt_of(m.parameters()) for m in modules]
        self.whole = torch.nn.Sequential(*modules)
        self.totals, self.n = [0] * (len(modules) if split else 1), 0

    def step(self, b: int) -> None:
        t_read = time.thread_time_ns()
        x, y = self.batches.get(b)
        t_read = time.thread_time_ns() - t_read
        timed = b >= self.warmup
        self.n += timed
        if not self.split:
            t0 = time.thread_time_ns() - t_read  # a plain loop reads its batches too
            torch.nn.functional.cross_entropy(self.whole(x), y).backward()
            self.opts[0].step()
            self.opts[0].zero_grad(set_to_none=True)
            self.totals[0] += (time.thread_time_ns() - t0) if timed else 0
            return
        xs, grads = stage_inputs(self.whole, x, y)
        for k, (m, opt) in enumerate(zip(self.modules, self.opts)):
            t0 = time.thread_time_ns()
            out = m(xs[k].requires_grad_(k > 0))
            out.backward(grads[k]) if grads[k] is not None else torch.nn.functional.cross_entropy(out, y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.totals[k] += (time.thread_time_ns() - t0) if timed else 0

    def result(self) -> list[float]:
        """CPU ms per timed batch."""
        return [t / max(self.n, 1) / 1e6 for t in self.totals]


def fixed_costs(stages, x, reps: int = 200) -> dict:
    """Batch-2 difference (ms per batch, summed over the stages that run on a snapshot): ``autograd.grad`` and
    the assignment to ``p.grad`` over ``backward``."""
    out = {"autograd.grad over backward": 0.0}
    h = x[:2]
    for s in stages:
        m, params = s.module, s.params
        xin = h.detach().requires_grad_(s.index > 0)
        h = m(h).detach()
        if not s.delayed or s.recompute:
            continue
        g = torch.ones_like(m(xin))
        variants = {
            "base": lambda: m(xin).backward(g),
            "grad": lambda: _assign(params, torch.autograd.grad(m(xin), params + ([xin] if s.index else []), g)),
        }
        times = {k: [] for k in variants}
        for _ in range(reps):
            for k, fn in variants.items():
                t0 = time.thread_time_ns()
                fn()
                times[k].append(time.thread_time_ns() - t0)
                for p in params:
                    p.grad = None
                xin.grad = None
        med = {k: statistics.median(v) / 1e6 for k, v in times.items()}
        out["autograd.grad over backward"] += med["grad"] - med["base"]
    return out


def _assign(params, grads):
    for p, g in zip(params, grads):
        p.grad = g


def sim_repeat(case: str, batches: int, warmup: int, meter: Meter) -> dict:
    """One repeat of a simulator case: the engine with the plain loop and the model ops interleaved batch by
    batch, the instrumented engine, and the batch-2 fixed costs."""
    from torchdecoupled.build import make_optimizer
    out = {}
    run, stages, plain = build(case, batches)
    opt_of = lambda ps: make_optimizer(run.config, list(ps))  # noqa: E731
    whole = PlainLoop(list(copy.deepcopy(plain)), opt_of, run.batches, warmup, split=False)
    split = PlainLoop(list(copy.deepcopy(plain)), opt_of, run.batches, warmup, split=True)

    n = run.schedule.num_batches  # MNIST-1D: its whole epoch

    def plain_batch(t):  # after tick t, batch t of each plain loop: engine and plain loops side by side in time
        if t < n:
            whole.step(t)
            split.step(t)
    out["engine"] = engine_cpu(stages, run.schedule, run.batches, warmup, between=plain_batch)
    out["plain"], out["model ops"] = whole.result()[0], split.result()
    run, stages, _ = build(case, batches)
    meter.ns, meter.on = dict.fromkeys(TIMED, 0), True
    out["instrumented"] = engine_cpu(stages, run.schedule, run.batches, warmup)
    meter.on = False
    per = n - warmup
    out["components"] = {k: v / per / 1e6 for k, v in meter.ns.items() if v}
    out["fixed"] = fixed_costs(stages, run.batches.get(0)[0])
    return out


DIST_CHILD = "--dist-child"


def dist_child(rank: int, port: int, out: str, steps: int) -> None:
    """One rank of the distributed ResNet-20 FDG run, as the speed benchmark runs it, with the meters on in
    the window of ``steps`` ticks."""
    from torchdecoupled.bench import runners
    from torchdecoupled.bench.jobs import Job
    from torchdecoupled.engines.malloc import keep_freed_memory
    keep_freed_memory()
    torch.set_num_threads(1)
    meter = Meter()
    instrument(meter)
    job = Job("fdg", "resnet20", boundaries=(4,), warmup=4, steps=steps)  # as the full speed run
    totals, actions = [], runners._TickClock.actions

    def tick(self, t, k):
        totals.append(dict(meter.ns))
        meter.on = job.first <= t < job.first + job.steps
        return actions(self, t, k)
    runners._TickClock.actions = tick
    rep = runners._run_ours(job, rank, ("store", ("127.0.0.1", port)))
    (_, p0, t0, _), (_, p1, t1, _) = rep["marks"][job.first], rep["marks"][job.first + job.steps]
    a, z = totals[job.first], totals[job.first + job.steps]
    res = {"main": (t1 - t0) / steps / 1e6, "other": ((p1 - p0) - (t1 - t0)) / steps / 1e6,
           "components": {k: (z[k] - a[k]) / steps / 1e6 for k in TIMED if z[k] - a[k]}}
    with open(out, "w") as f:
        json.dump(res, f)
    sys.stdout.flush()
    os._exit(0)  # as bench.runners' children: no teardown of gloo's threads at interpreter exit


def dist_repeat(steps: int) -> list[dict]:
    """Both ranks of one distributed run, in fresh processes."""
    import tempfile
    from datetime import timedelta
    import torch.distributed as dist
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=300))
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"r{r}.json") for r in range(2)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs = [subprocess.Popen([sys.executable, __file__, DIST_CHILD, str(r), str(store.port), outs[r], str(steps)],
                                  env=env) for r in range(2)]
        for p in procs:
            if p.wait(timeout=600):
                raise RuntimeError(f"a distributed rank exited with {p.returncode}")
        return [json.load(open(o)) for o in outs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, default=10, help="batches per simulator run (the first --warmup not timed)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed ticks of a distributed run")
    p.add_argument("--cases", default="resnet20,cnn1d_k1,cnn1d_k3,resnet20_dist")
    p.add_argument("--doc", help="write the section into this markdown file (e.g. docs/speed.md)")
    a = p.parse_args()
    from torchdecoupled.engines.malloc import keep_freed_memory
    from torchdecoupled.metrics import machine
    torch.set_num_threads(1)
    keep_freed_memory()  # as every stage process does: the plain loop and the simulator alike
    meter = Meter()
    instrument(meter)
    cases = a.cases.split(",")
    res = {c: [] for c in cases}
    t_start = time.time()
    for i in range(a.repeats):
        for c in cases[i % len(cases):] + cases[:i % len(cases)]:
            n = a.batches if c.startswith("resnet") else 4 * a.batches
            res[c].append(dist_repeat(a.steps) if c == "resnet20_dist" else sim_repeat(c, n, a.warmup, meter))
            print(f"repeat {i} {c}: {json.dumps(res[c][-1], default=str)[:400]}", flush=True)
    m = machine()
    load = os.getloadavg()[0]
    section = [MARK, "", "    python benchmarks/overhead.py " + " ".join(sys.argv[1:]), "",
               f"Machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, commit {m['commit']}; load average "
               f"{load:.1f} at the end; {a.repeats} interleaved repeats, "
               f"{time.time() - t_start:.0f} s. CPU time of one thread (`time.thread_time_ns`); medians, "
               f"(min-max) over the repeats. The component rows are timed in a separate instrumented run: "
               f"each includes its timers' own cost (a few microseconds a call) and the cold caches after the "
               f"model's ops, so small rows are upper bounds. In the distributed run the main thread's CPU also "
               f"includes what two processes running at once cost each other (shared caches, memory bandwidth): "
               f"the gap between its stages and the same stages in one process that the rows do not explain.", ""]
    for c in cases:
        if c != "resnet20_dist":
            section += sim_table(c, res[c])
    if "resnet20_dist" in cases:
        section += dist_table(res["resnet20_dist"], [r["plain"] for r in res["resnet20"]] if "resnet20" in res else None)
    print("\n".join(section))
    if a.doc:
        write_doc(a.doc, section)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == DIST_CHILD:
        dist_child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    else:
        main()
