"""Where a decoupled stage process's CPU goes: torch.profiler in each FDG stage process (K = 2, the speed
benchmark's runner) against the same stage run as a plain PyTorch loop, alone and with the other stage's plain
loop beside it (two processes on the two cores, no engine, no messages). Writes a section of docs/speed.md.

    python benchmarks/stage_profile.py [--model resnet20] [--cut 4] [--steps 8] [--repeats 3] [--doc docs/speed.md]

Per stage, medians over interleaved repeats of the main thread's CPU per tick (``time.thread_time``, the
profiler on in every run alike), split into:

- alone: the stage's plain loop (forward, backward with a fixed output gradient or the loss, SGD step) with
  nothing else running;
- side by side: the same loop while the other stage's plain loop runs: what two processes sharing the caches
  and memory cost each other (the limit of 2x BP for two one-thread processes already pays this);
- messages: the profiler's ``c10d::`` rows (posting and waiting for sends and receives, in the main thread);
- engine-only ops: aten ops the engine runs and the plain loop does not (non-finite checks' sums, bookkeeping);
- the model's ops, slower: the same aten ops (same counts) taking longer in the stage process than in the
  plain loop beside the other one;
- outside ops: the rest of the main thread's CPU (Python of the worker, hooks, the profiler's own records).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead_report import write_doc  # noqa: E402

MARK = "## Where a stage process's CPU goes: {model}"
WARMUP = 6
CUTS = {"resnet20": 4, "resnet56": 11}  # the speed benchmark's time-balanced cuts (docs/speed.md)


def _ops(prof, steps: int) -> dict:
    return {e.key: [e.self_cpu_time_total / steps / 1e3, e.count / steps] for e in prof.key_averages()}


def engine_child(rank: int, port: int, out: str, model: str, cut: int, steps: int) -> None:
    """One FDG stage process of the speed benchmark (bench.runners), profiled over ``steps`` steady ticks."""
    from torchdecoupled.bench import runners
    from torchdecoupled.bench.jobs import Job
    from torchdecoupled.engines.malloc import keep_freed_memory
    keep_freed_memory()
    torch.set_num_threads(1)
    job = Job("fdg", model, boundaries=(cut,), warmup=WARMUP, steps=steps)
    actions, st = runners._TickClock.actions, {}

    def tick(self, t, k):
        if t == job.first:
            st["prof"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            st["prof"].__enter__()
            st["t0"] = time.thread_time()
        elif t == job.first + job.steps:
            st["cpu"] = (time.thread_time() - st["t0"]) / steps * 1e3
            st["prof"].__exit__(None, None, None)
        return actions(self, t, k)
    runners._TickClock.actions = tick
    runners._run_ours(job, rank, ("store", ("127.0.0.1", port)))
    with open(out, "w") as f:
        json.dump({"cpu": st["cpu"], "ops": _ops(st["prof"], steps)}, f)
    sys.stdout.flush()
    os._exit(0)  # as bench.runners' children


def plain_child(rank: int, out: str, model: str, cut: int, steps: int) -> None:
    """Stage ``rank``'s modules in a plain loop on the benchmark's data, model and SGD (bench.workload)."""
    from torchdecoupled.bench import workload
    from torchdecoupled.bench.jobs import Job
    from torchdecoupled.engines.malloc import keep_freed_memory
    keep_freed_memory()
    torch.set_num_threads(1)
    job = Job("bp_1thread", model)
    dataset = workload.data(job)
    net = workload.model(job, dataset.num_classes)
    x, y = workload.batches(job, dataset).get(0)
    if rank == 1:
        with torch.no_grad():
            x = net[:cut](x)
    mod = net[cut:] if rank == 1 else net[:cut]
    opt = workload.sgd(mod.parameters())
    grad = None

    def step():
        nonlocal grad
        out = mod(x.detach().requires_grad_(rank == 1))
        if rank == 0:
            grad = torch.randn_like(out) * 1e-3 if grad is None else grad
            out.backward(grad)
        else:
            torch.nn.functional.cross_entropy(out, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for _ in range(WARMUP):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.thread_time()
        for _ in range(steps):
            step()
        cpu = (time.thread_time() - t0) / steps * 1e3
    for _ in range(steps):  # keep running while the other side-by-side process finishes its window
        step()
    with open(out, "w") as f:
        json.dump({"cpu": cpu, "ops": _ops(prof, steps)}, f)


def _spawn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], env=env)


def _wait(procs) -> None:
    for p in procs:
        if p.wait(timeout=900):
            raise RuntimeError(f"a profiled process exited with {p.returncode}")


def one_repeat(a, tmp: str, order: int) -> dict:
    """The engine run, the plain loops side by side, each plain loop alone; in a rotating order."""
    import torch.distributed as dist
    files = {kind: [os.path.join(tmp, f"{kind}{r}.json") for r in range(2)] for kind in ("engine", "side", "alone")}
    common = [a.model, str(a.cut), str(a.steps)]

    def engine(tries: int = 2):
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=300))
        procs = [_spawn(["engine", str(r), str(store.port), files["engine"][r], *common]) for r in range(2)]
        try:
            _wait(procs)
        except RuntimeError:  # torch.profiler in a gloo process crashes now and then (SIGSEGV): run it again
            for p in procs:
                p.kill()
            if tries <= 1:
                raise
            print("an engine run crashed under the profiler; running it again", flush=True)
            engine(tries - 1)

    def side():
        _wait([_spawn(["plain", str(r), files["side"][r], *common]) for r in range(2)])

    def alone():
        for r in range(2):
            _wait([_spawn(["plain", str(r), files["alone"][r], *common])])
    runs = [engine, side, alone]
    for run in runs[order % 3:] + runs[:order % 3]:
        run()
    return {kind: [json.load(open(f)) for f in fs] for kind, fs in files.items()}


def breakdown(rep: dict, r: int) -> dict:
    """ms per tick of stage r in one repeat."""
    e, s, al = rep["engine"][r], rep["side"][r], rep["alone"][r]
    msg = sum(v[0] for k, v in e["ops"].items() if k.startswith("c10d::"))
    only = slower = 0.0
    for k, (ms, n) in e["ops"].items():
        if k.startswith("c10d::"):
            continue
        pm, pn = s["ops"].get(k, (0.0, 0.0))
        if pn and abs(n - pn) <= 0.01 * max(n, pn):
            slower += ms - pm
        else:
            only += ms - pm * (min(n, pn) / n if n else 0)
    missing = sum(pm for k, (pm, pn) in s["ops"].items() if k not in e["ops"])  # ops the plain loop has alone
    e_in, s_in = sum(v[0] for v in e["ops"].values()), sum(v[0] for v in s["ops"].values())
    return {"engine": e["cpu"], "alone": al["cpu"], "side": s["cpu"], "interference": s["cpu"] - al["cpu"],
            "messages": msg, "engine_ops": only - missing, "slower_ops": slower,
            "outside": (e["cpu"] - e_in) - (s["cpu"] - s_in)}


ROWS = [("engine", "stage process (main thread)"), ("alone", "plain loop, alone"),
        ("side", "plain loop, the other stage's beside it"), ("interference", "- two processes at once (side - alone)"),
        ("messages", "- messages (c10d send/recv in the main thread)"),
        ("engine_ops", "- engine-only ops (non-finite checks, bookkeeping)"),
        ("slower_ops", "- the model's ops, slower than beside the other loop"),
        ("outside", "- outside ops (Python, hooks)")]


def top_slower(reps: list[dict], r: int, n: int = 6) -> list[str]:
    keys = {}
    for rep in reps:
        e, s = rep["engine"][r]["ops"], rep["side"][r]["ops"]
        for k, (ms, cnt) in e.items():
            if k in s and not k.startswith("c10d::"):
                keys.setdefault(k, []).append((ms, s[k][0], cnt))
    rows = sorted(keys.items(), key=lambda kv: -statistics.median(m - p for m, p, _ in kv[1]))[:n]
    return [f"`{k}` {statistics.median(m for m, _, _ in v):.1f} vs {statistics.median(p for _, p, _ in v):.1f} ms "
            f"({statistics.median(c for _, _, c in v):g} calls)" for k, v in rows]


def markdown(reps: list[dict], a, elapsed: float) -> list[str]:
    from torchdecoupled.metrics import machine
    m = machine()
    per = [[breakdown(rep, r) for rep in reps] for r in range(2)]
    med = lambda r, key: statistics.median(b[key] for b in per[r])  # noqa: E731
    both = lambda key: [b0[key] + b1[key] for b0, b1 in zip(per[0], per[1])]  # noqa: E731

    def cell(values, digits: int = 1) -> str:
        return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"
    lines = [MARK.format(model=a.model), "", f"    python benchmarks/stage_profile.py {' '.join(sys.argv[1:])}".rstrip(), "",
             f"Machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, commit {m['commit']}; load average "
             f"{os.getloadavg()[0]:.1f} at the end; {len(reps)} interleaved repeats, {elapsed:.0f} s. {a.model}, "
             f"batch 128, FDG K = 2 cut after block {a.cut}, {a.steps} profiled ticks after {WARMUP} warm-up ticks "
             f"(the plain loops: {a.steps} profiled steps after {WARMUP}). Main-thread CPU ms per tick, medians; "
             "the profiler is on in every run alike (it adds a few microseconds per op). Each row: the median "
             "(min to max) over the repeats of that row's value within one repeat, so the rows need not add up. "
             "The messages and engine-only rows are read inside the stage process's own profile; the other "
             "rows compare runs minutes apart and carry the machine's drift.", "",
             "| CPU ms per tick | stage 0 | stage 1 | both |", "|---|---:|---:|---:|"]
    for key, label in ROWS:
        lines.append(f"| {label} | {cell([b[key] for b in per[0]])} | {cell([b[key] for b in per[1]])} | "
                     f"{cell(both(key))} |")
    work = [a / e for a, e in zip(both("alone"), both("engine"))]
    pair = [a / s for a, s in zip(both("alone"), both("side"))]
    lines += ["", f"Work factor (the plain stages alone / the stage processes, within a repeat): **{cell(work, 3)}**; "
              f"the plain loops beside each other: {cell(pair, 3)}.", ""]
    for r in range(2):
        lines.append(f"- stage {r}, the ops that slow down most (stage process vs plain loop beside the other): "
                     + "; ".join(top_slower(reps, r)) + ".")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--cut", type=int, help="the cut point (default: the speed benchmark's for the model)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--doc", help="write the section into this Markdown file (e.g. docs/speed.md)")
    p.add_argument("--details", metavar="FILE", help="also write every repeat's profiles as JSON")
    a = p.parse_args()
    if a.cut is None:
        if a.model not in CUTS:
            raise SystemExit(f"--cut is needed for {a.model!r} (defaults exist for {', '.join(CUTS)})")
        a.cut = CUTS[a.model]
    t0, reps = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            reps.append(one_repeat(a, tmp, i))
            b = [breakdown(reps[-1], r) for r in range(2)]
            print(f"repeat {i + 1}: " + json.dumps([{k: round(v, 1) for k, v in x.items()} for x in b]), flush=True)
    if a.details:
        with open(a.details, "w") as f:
            json.dump({"argv": sys.argv[1:], "repeats": reps}, f)
    lines = markdown(reps, a, time.time() - t0)
    print("\n".join(lines))
    if a.doc:
        write_doc(a.doc, lines, MARK.format(model=a.model))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        engine_child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]))
    elif len(sys.argv) > 1 and sys.argv[1] == "plain":
        plain_child(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
