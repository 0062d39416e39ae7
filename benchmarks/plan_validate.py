"""Validate the planner (torchdecoupled.plan) against the distributed engine on this machine; write docs/planner.md.

Cases: FDG on ResNet-20, K = 2, 3, 4 with one replica and K = 2 with D = 2 replicas (4 processes), a small
batch. For each: the planner measures the per-layer costs here (one thread, scaled to a whole training step's
time, the faster of two measurements), picks its best cut for ``cores`` = this machine's CPUs (K x D processes
time-share them) and predicts the seconds per tick; then the engine runs that cut through the speed
benchmark's own code (``torchdecoupled.bench``: ``run_job`` / ``summarize_run``, the same StageProcess, the
same tick clock; D = 2 through a copy of its runner with a D-replica Layout, which the benchmark lacks) and
the measured period is compared with the prediction. BP with one thread is a fifth row.
It rewrites the validation section of docs/planner.md (the worked examples: benchmarks/plan_examples.py).

    python benchmarks/plan_validate.py                   # about 3 minutes on 2 idle cores
    python benchmarks/plan_validate.py --repeats 3 --batch 64 --steps 6
    python benchmarks/plan_validate.py --probe          # the two host constants the planner uses here (1 minute)

``--probe`` measures what ``plan/links.py`` (``gloo-local``'s host CPU per byte) and ``plan/api.py``
(``CONTENTION``) hold: two processes passing 1, 4 and 8 MiB tensors over gloo (CPU of all threads per message,
each end), and 1 to 4 one-thread training loops of a ResNet-20 stage at once (thread CPU per step against one
alone).
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import pickle
import statistics
import sys
import time

import torch

from torchdecoupled.bench import Job, run_job, summarize_run
from torchdecoupled.engines.malloc import keep_freed_memory
from torchdecoupled.methods import get_method
from torchdecoupled.metrics import machine
from torchdecoupled.plan import costs as costs_mod
from torchdecoupled.plan.api import CONTENTION, zoo_inputs
from torchdecoupled.plan.links import get_link
from torchdecoupled.plan.search import Setup, best_cut, evaluate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plan_examples import write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

CASES = [(2, 1), (3, 1), (4, 1), (2, 2)]
MODEL = "resnet20"


def layer_costs(batch: int, clock: str, repeats: int = 3) -> costs_mod.Costs:
    """The planner's costs at ``batch`` (calibrated to a whole step), the faster of two measurements (other
    jobs only add time)."""
    model, x, y = zoo_inputs(MODEL, "synthetic", batch)
    runs = [costs_mod.measure(model, x, y, repeats=repeats, model_name=MODEL, clock=clock) for _ in range(2)]
    return min(runs, key=lambda r: sum(c.forward_s + c.backward_s + c.update_s for c in r.layers))


# ---- D replicas: the speed benchmark's runner (bench/runners.py: _run_ours, _child) with a K x D layout ----

def _replica_child(job: Job, replicas: int, rank: int, rendezvous, conn) -> None:
    code = 1
    try:
        from torchdecoupled import data as data_mod
        from torchdecoupled.bench import runners, workload
        from torchdecoupled.build import build_pipeline
        from torchdecoupled.engines.dist_layout import Layout
        from torchdecoupled.engines.dist_worker import StageProcess
        from torchdecoupled.engines.malloc import keep_freed_memory

        keep_freed_memory()
        torch.set_num_threads(1)
        data_mod.DATASETS["synthetic"] = lambda root, seed, **kw: workload.data(job)
        pipe, _, batches = build_pipeline(dataclasses.replace(runners._ours_config(job), replicas=replicas))
        run, specs = pipe.dist_parts(batches.per_epoch, 1)
        proc = StageProcess(run, Layout(job.stages, replicas, rank), specs[rank // replicas], "cpu", "gloo",
                            rendezvous, data=batches if rank == 0 else None)
        clock = proc.schedule = runners._TickClock(proc.schedule)
        proc.train()
        proc.finish()
        conn.send_bytes(pickle.dumps(("ok", {"marks": clock.marks, "rss_mb": workload.peak_rss_mb()})))
        code = 0
    except BaseException as e:  # noqa: BLE001 - report whatever it is
        conn.send_bytes(pickle.dumps(("error", f"rank {rank}: {type(e).__name__}: {e}")))
    finally:
        os._exit(code)


def run_replicas(job: Job, replicas: int) -> dict:
    """Like ``bench.run_job`` for K x D processes; returns what ``summarize_run`` reads."""
    from datetime import timedelta

    import torch.distributed as dist
    ctx = mp.get_context("spawn")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=300))
    world, procs, conns = job.stages * replicas, [], []
    try:
        for rank in range(world):
            here, there = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_replica_child, args=(job, replicas, rank, ("store", ("127.0.0.1", store.port)),
                                                         there), daemon=True)
            p.start()
            there.close()
            procs.append(p)
            conns.append(here)
        ranks = []
        for c in conns:
            status, out = pickle.loads(c.recv_bytes())
            if status != "ok":
                raise RuntimeError(out)
            ranks.append(out)
        return {"job": job, "ranks": ranks}
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


# ---- predict, measure, compare -----------------------------------------------------------------------------

def scaled(costs: costs_mod.Costs, factor: float) -> costs_mod.Costs:
    """The same costs with every layer's compute times multiplied by ``factor``."""
    return dataclasses.replace(costs, layers=[dataclasses.replace(
        c, forward_s=c.forward_s * factor, backward_s=c.backward_s * factor, update_s=c.update_s * factor)
        for c in costs.layers])


def predict(costs: dict, K: int, D: int, batch: int, cores: int, steps: int, cut=None, factor: float = 1.0) -> dict:
    """The planner's cut (unless given) and its period, as the benchmark reports it, with and without
    time-sharing ``cores``; each stage's compute per tick (costs times ``factor``)."""
    method, link = get_method("bp" if K == 1 else "fdg"), get_link("gloo-local")
    part = scaled(costs[-(-batch // D)], factor)
    contention = CONTENTION if K * D > 1 else 0.0
    setup = Setup(part, method, K, link, D, cores, steps, period="mean", contention=contention)  # the benchmark's window
    best = best_cut(setup)[0] if cut is None else evaluate(setup, cut)
    free = evaluate(Setup(part, method, K, link, D, None, steps, period="mean", contention=contention),
                    best["boundaries"])
    return {"cut": best["boundaries"], "period_s": best["period_s"], "no_sharing_s": free["period_s"],
            "stage_s": best["stage_s"]}


def measure_case(K: int, D: int, cut, a) -> tuple[float, list[float]]:
    """(seconds per tick, each stage's CPU seconds per tick, the mean over its replicas)."""
    if K == 1:
        job = Job("bp_1thread", MODEL, batch=a.batch, warmup=2, steps=a.steps)
        raw = run_job(job)
    else:
        job = Job("fdg", MODEL, batch=a.batch, stages=K, warmup=2, steps=a.steps, boundaries=tuple(cut))
        raw = run_job(job) if D == 1 else run_replicas(job, D)
    res = summarize_run(raw)
    cpu = [statistics.fmean(r["main_cpu_ms"] for r in res["ranks"][k * D:(k + 1) * D]) / 1e3 for k in range(K)]
    return res["step_ms"] / 1e3, cpu


def validate(a) -> tuple[list[dict], dict]:
    cores = a.cores or os.cpu_count()
    t0 = time.perf_counter()
    batches = {a.batch, -(-a.batch // 2)}
    wall = {b: layer_costs(b, "wall") for b in batches}
    cpu = {b: layer_costs(b, "cpu") for b in batches}
    rows = []
    for K, D in [(1, 1)] + CASES:
        row = {"K": K, "D": D, **predict(wall, K, D, a.batch, cores, a.steps)}
        quiet = predict(cpu, K, D, a.batch, cores, a.steps, row["cut"])
        rows.append({**row, "quiet_s": quiet["period_s"], "cpu_stage_s": quiet["stage_s"], "measured": [],
                     "cpu": []})
    for r in range(a.repeats):  # interleaved repeats, medians
        for row in rows[r % len(rows):] + rows[:r % len(rows)]:
            step, stage_cpu = measure_case(row["K"], row["D"], row["cut"], a)
            row["measured"].append(step)
            row["cpu"].append(stage_cpu)
            print(f"  repeat {r + 1}: K={row['K']} D={row['D']} cut {row['cut']}: measured {step * 1e3:.1f} ms/tick, "
                  f"predicted {row['period_s'] * 1e3:.1f}; stage CPU {[round(c * 1e3) for c in stage_cpu]} ms, "
                  f"predicted {[round(c * 1e3) for c in row['cpu_stage_s']]}", flush=True)
    for row in rows:
        row["measured_s"] = statistics.median(row["measured"])
        row["measured_cpu_s"] = [statistics.median(c[k] for c in row["cpu"]) for k in range(row["K"])]
    # calibration: the costs rescaled so that BP's predicted step is the BP step measured alongside (interleaved
    # with the other cases, so the machine's drift since the costs were measured is shared), per clock
    bp = rows[0]
    info_factor = {"wall": bp["measured_s"] / bp["period_s"], "cpu": bp["measured_cpu_s"][0] / bp["cpu_stage_s"][0]}
    for row in rows:
        row["raw_error"] = row["period_s"] / row["measured_s"] - 1
        row.update(predict(wall, row["K"], row["D"], a.batch, cores, a.steps, row["cut"], info_factor["wall"]))
        quiet = predict(cpu, row["K"], row["D"], a.batch, cores, a.steps, row["cut"], info_factor["cpu"])
        row["quiet_s"], row["cpu_stage_s"] = quiet["period_s"], quiet["stage_s"]
        row["error"] = row["period_s"] / row["measured_s"] - 1
        row["cpu_error"] = [p / m - 1 for p, m in zip(row["cpu_stage_s"], row["measured_cpu_s"])]
    info = {"factor": info_factor, "cores": cores, "elapsed_s": time.perf_counter() - t0, "load": os.getloadavg(),
            "total_ms": sum(c.forward_s + c.backward_s + c.update_s for c in wall[a.batch].layers) * 1e3,
            "total_cpu_ms": sum(c.forward_s + c.backward_s + c.update_s for c in cpu[a.batch].layers) * 1e3}
    return rows, info


def _ms(values) -> str:
    return "/".join(f"{v * 1e3:.0f}" for v in values)


def validation_markdown(rows, info, a) -> list[str]:
    mach = machine()
    out = [
        "## Validation: predicted against measured, this machine",
        "",
        f"Command: `python benchmarks/plan_validate.py --batch {a.batch} --steps {a.steps} --repeats {a.repeats}`  ",
        f"Machine: {mach['platform']}, {mach['cpus']} CPUs, torch {mach['torch']}; load average "
        f"{info['load'][0]:.1f} at the end; {info['elapsed_s']:.0f} s.",
        "",
        f"FDG on ResNet-20, batch {a.batch}, synthetic CIFAR-shaped data, gloo on CPU, one thread per process; "
        f"BP in one process with one thread. The planner measures the costs here (one thread, scaled to a whole "
        f"training step: {info['total_ms']:.0f} ms of wall time and {info['total_cpu_ms']:.0f} ms of CPU time "
        f"per batch), picks the cut, and predicts the time per tick with `cores={info['cores']}` (K x D processes "
        f"time-share the cores, compute {100 * CONTENTION:g} % slower while they share the host: `contention`) "
        f"and link `gloo-local` (its host CPU per message byte included), as the speed benchmark reports it (the "
        f"mean over "
        f"processes of a {a.steps}-tick window after the fill and 2 warm-up ticks). Measured: that benchmark's "
        f"code (`torchdecoupled.bench`), median of {a.repeats} interleaved runs. Error = predicted / measured - 1. "
        f"Calibration: the costs are then rescaled so that BP's predicted step equals the BP step measured in the "
        f"same interleaved repeats (x{info['factor']['wall']:.3f} wall, x{info['factor']['cpu']:.3f} CPU; the "
        f"machine's speed drifts between measuring the costs and running), so BP's row is exact by construction; "
        f"'uncalibrated' is the error without that step. The CPU columns compare each "
        "stage's predicted compute per tick (costs on the CPU-time clock) with the CPU time its process's main "
        "thread used per tick: a check of the cost model that other jobs on the machine disturb far less; "
        "'quiet' is the period predicted from the CPU-time costs, what an otherwise idle machine should show.",
        "",
        "| K | D | processes | cut | predicted ms/tick | no time-sharing | measured ms/tick | error | uncalibrated | "
        "quiet | stage CPU ms/tick, predicted | measured | worst stage |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in rows:
        name = "BP" if r["K"] == 1 else f"{r['K']}"
        worst = max(r["cpu_error"], key=abs)
        out.append(f"| {name} | {r['D']} | {r['K'] * r['D']} | {r['cut']} | {r['period_s'] * 1e3:.1f} | "
                   f"{r['no_sharing_s'] * 1e3:.1f} | {r['measured_s'] * 1e3:.1f} ({_ms(r['measured'])}) | "
                   f"{100 * r['error']:+.1f} % | {100 * r['raw_error']:+.1f} % | {r['quiet_s'] * 1e3:.1f} | "
                   f"{_ms(r['cpu_stage_s'])} | "
                   f"{_ms(r['measured_cpu_s'])} | {100 * worst:+.1f} % |")
    worst = max(abs(r["error"]) for r in rows)
    worst_cpu = max(abs(e) for r in rows for e in r["cpu_error"])
    out += ["", f"Largest error of the time per tick {100 * worst:.1f} % (target: within 15 %): "
            f"{'met' if worst <= 0.15 else 'MISSED'}; of a stage's CPU time per tick {100 * worst_cpu:.1f} %.", ""]
    return out


# ---- --probe: the host constants ---------------------------------------------------------------------------

def _probe_messages(rank: int, port: int, conn) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    out = {}
    for mib in (1, 4, 8):
        t = torch.randn(mib << 18)
        for rep in range(2):  # the first round warms the connection
            dist.barrier()
            c0 = time.process_time()
            for _ in range(20):
                (dist.isend(t, 1) if rank == 0 else dist.irecv(t, 0)).wait()
            out[mib] = (time.process_time() - c0) / 20
    dist.barrier()
    conn.send(out)
    os._exit(0)


def _probe_loop(steps: int, conn) -> None:
    from torchdecoupled.models import build_model
    keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = build_model(MODEL, 10, (3, 32, 32))
    x, y = torch.randn(128, 3, 32, 32), torch.randint(10, (128,))
    with torch.no_grad():
        x = net[:4](x)
    mod = net[4:]
    opt = torch.optim.SGD(mod.parameters(), lr=0.1, momentum=0.9)
    times = []
    for i in range(steps + 3):
        c0 = time.thread_time()
        torch.nn.functional.cross_entropy(mod(x.requires_grad_()), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 3:
            times.append(time.thread_time() - c0)
    conn.send(statistics.median(times))


def _gather(target, args_list) -> list:
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe(duplex=False) for _ in args_list]
    procs = [ctx.Process(target=target, args=(*args, w)) for args, (_, w) in zip(args_list, pipes)]
    for p in procs:
        p.start()
    out = [r.recv() for r, _ in pipes]
    for p in procs:
        p.join()
    return out


def probe(repeats: int) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    send, recv = _gather(_probe_messages, [(0, port), (1, port)])
    for mib in send:
        nbytes = mib << 20
        print(f"gloo, {mib} MiB: send {send[mib] * 1e3:.2f} ms, receive {recv[mib] * 1e3:.2f} ms of CPU: "
              f"{send[mib] / nbytes * 1e9:.2f} and {recv[mib] / nbytes * 1e9:.2f} ns per byte")
    base = {n: [] for n in range(1, 5)}
    for _ in range(repeats):  # interleaved: 1, 2, 3, 4 at a time
        for n in base:
            base[n].append(statistics.mean(_gather(_probe_loop, [(16,)] * n)))
    alone = statistics.median(base[1])
    for n, v in base.items():
        print(f"{n} training loop(s) at once: {statistics.median(v) * 1e3:.1f} ms of CPU per step, "
              f"{100 * (statistics.median(v) / alone - 1):+.1f} % against one alone")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cores", type=int, help="cores to model (default: os.cpu_count())")
    p.add_argument("--doc", default="docs/planner.md")
    p.add_argument("--note", default="", help="a sentence about the machine's state, written under the table")
    p.add_argument("--probe", action="store_true", help="measure the host constants (message CPU, contention) only")
    a = p.parse_args()
    if a.probe:
        return probe(a.repeats)
    torch.set_num_threads(1)
    keep_freed_memory()  # measure the costs as the engine's stage processes run (engines/malloc.py)
    rows, info = validate(a)
    lines = validation_markdown(rows, info, a)
    if a.note:
        lines += [a.note, ""]
    write_section(a.doc, "validation", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
