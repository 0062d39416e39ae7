"""The speed benchmark's results as text: the targets (``verdict``), the tables, the speed-up's
decomposition, and docs/speed.md (``write_report``, which keeps hand-written notes). Rates are images/s,
or tokens/s for a language model (``result["unit"]``)."""
from __future__ import annotations

import statistics

from .jobs import PIPE

# The speed targets: FDG over BP with one thread (the limit for two one-thread processes is 2x), DTRP over
# BP (its stage 0 runs F + F + B: at an even cut of F + B = 3 units, about 2 x 3/4 = 1.5x is its ideal),
# FDG over the best torch.distributed.pipelining schedule.
TARGETS = {"fdg_over_bp_1thread": 1.9, "dtrp_over_bp_1thread": 1.5, "fdg_over_best_pipelining": 1.2}


def verdict(result: dict) -> dict:
    """The targets (``TARGETS``): FDG and DTRP over BP with 1 thread, FDG over the best pipelining schedule.

    Two estimates of each ratio: of the medians, and the median over repeats of the ratio within a repeat
    (``paired``: the runs of one repeat are minutes apart, so a slow spell of the machine cancels out)."""
    ips, best = result["per_s"], result.get("best", {})
    out = {}
    pipes = [c for c in PIPE if c in ips]
    if "fdg" in ips and "bp_1thread" in ips:
        out["fdg_over_bp_1thread"] = round(ips["fdg"] / ips["bp_1thread"], 3)
    if "dtrp" in ips and "bp_1thread" in ips:
        out["dtrp_over_bp_1thread"] = round(ips["dtrp"] / ips["bp_1thread"], 3)
    if "fdg" in ips and pipes:
        out["fdg_over_best_pipelining"] = round(ips["fdg"] / max(ips[c] for c in pipes), 3)
    runs = {c: best[c]["all"] for c in ips if c in best and "all" in best[c]}
    if "fdg" in runs and "bp_1thread" in runs:
        out["fdg_over_bp_1thread_paired"] = round(statistics.median(
            f / b for f, b in zip(runs["fdg"], runs["bp_1thread"])), 3)
    if "fdg" in runs and pipes and all(c in runs for c in pipes):
        out["fdg_over_best_pipelining_paired"] = round(statistics.median(
            f / max(p) for f, *p in zip(runs["fdg"], *(runs[c] for c in pipes))), 3)
    return out


def unit_short(result: dict) -> str:
    return "tok/s" if result.get("unit") == "tokens" else "img/s"


def markdown(results: list[dict], meta: dict) -> str:
    lines = []
    contenders = list(dict.fromkeys(c for r in results for c in r["per_s"]))
    lines.append("| contender | " + " | ".join(f"{r['model']} {unit_short(r)}" for r in results)
                 + " | processes x threads |")
    lines.append("|---|" + "---:|" * len(results) + "---|")
    for c in contenders:
        cells = []
        for r in results:
            b = r["best"].get(c)
            extra = f" (m={b['microbatches']})" if b and b["microbatches"] else ""
            cells.append(f"{b['per_s']:.1f}{extra}" if b else "—")
        how = "1 x 1" if c == "bp_1thread" else "1 x 2" if c == "bp_2threads" else f"{meta['stages']} x 1"
        lines.append(f"| `{c}` | " + " | ".join(cells) + f" | {how} |")
    return "\n".join(lines)


def detail_table(result: dict) -> str:
    rows = [f"| run | {unit_short(result)} (median) | every repeat | ms/batch | loss after the run | per process: "
            "main-thread CPU ms/batch, other threads' CPU ms/batch, page faults/batch, [ours: blocked on messages "
            "ms/batch, idle], peak RSS MB |",
            "|---|---:|---|---:|---:|---|"]
    for name, v in result["variants"].items():
        per = []
        for i, r in enumerate(v["ranks"]):
            s = f"r{i}: {r['main_cpu_ms']:.0f}, {r['other_cpu_ms']:.0f}, {r['faults']:.0f}"
            if "wait_ms" in r:
                s += f", [{r['wait_ms'] + r['send_wait_ms']:.0f}, {r['idle']:.0%}]"
            s += f", {r['rss_mb']:.0f}"
            per.append(s)
        step = statistics.fmean(r["step_ms"] for r in v["ranks"])
        loss = f"{v['loss']:.4f}" if v.get("loss") is not None else "—"
        rows.append(f"| `{name}` | {v['per_s']:.1f} | {', '.join(f'{x:.0f}' for x in v['all'])} | "
                    f"{step:.0f} | {loss} | {'; '.join(per)} |")
    return "\n".join(rows)

def decompose(result: dict, contender: str) -> dict | None:
    """Speed-up over BP with 1 thread as a product of four factors (from the medians of the runs):

    ``T_bp / T = (T_bp / C_bp) * (C_bp / sum C_k) * (sum C_k / max C_k) * (max C_k / T)``

    where T is wall time per batch and C the main thread's CPU time per batch (C_k: stage process k).
    ``C_bp / sum C_k`` is the work efficiency (extra compute for the same batch: stashing, recompute,
    small micro-batches, page faults), ``sum / max`` the balance (at most K), ``max C_k / T`` how busy the
    busiest stage is (below 1: waiting on messages, pipeline bubbles, or CPU taken by other threads or
    processes), ``T_bp / C_bp`` the same for BP (below 1: BP itself lost CPU)."""
    if "bp_1thread" not in result["variants"] or contender not in result["best"]:
        return None
    bp = result["variants"]["bp_1thread"]["ranks"][0]
    ranks = result["best"][contender]["ranks"]
    cpu = [r["main_cpu_ms"] for r in ranks]
    step = statistics.fmean(r["step_ms"] for r in ranks)
    return {"bp_busy": bp["main_cpu_ms"] / bp["step_ms"], "work": bp["main_cpu_ms"] / sum(cpu),
            "balance": sum(cpu) / max(cpu), "busy": max(cpu) / step, "speedup": bp["step_ms"] / step,
            "cpu_ms": cpu, "step_ms": step, "bp_step_ms": bp["step_ms"], "bp_cpu_ms": bp["main_cpu_ms"]}


HOW = """## How it is measured

- **Same work everywhere**: the same model (seed 0), batch, synthetic data (`data.Batches` over
  `load_synthetic`), loss and SGD (lr 0.1, momentum 0.9, weight decay 5e-4). Every run is a fresh set of
  processes started from one forkserver with torch preloaded; the multi-process contenders run one
  process per stage with one thread each and talk over gloo on 127.0.0.1.
- **Our engine** runs exactly what `torchdecoupled train --engine dist` runs in each process
  (`engines.dist_worker.StageProcess`: Stage, Worker, DistTransport, timeline recorder on), cut where
  `--partition time` cuts. The per-layer costs are measured once at the start of the benchmark
  (`partition.layer_costs`, one thread; each layer's cost the smaller of two medians of two
  training-like passes) and every run uses that cut, so repeats differ only by timing noise. DTRP's
  time balance counts its recompute (F + F + B on stage 0).
- **torch.distributed.pipelining**: every schedule of torch 2.13 (`bench/pipe.py`):
  `PipelineStage(input_args=...)` with the right `requires_grad`, the benchmark's loss (cross-entropy,
  `lm_loss`) as `loss_fn`. GPipe and 1F1B run one stage per process, on the same cut as FDG; Interleaved
  1F1B, Looped BFS and Interleaved Zero Bubble run the model cut into 2K pieces (by the same measured
  per-layer costs), process r holding pieces r and r + K; ZB-V and DualPipeV the same 2K pieces in a V,
  process r holding r and 2K - 1 - r (torch's own placement, checked against the schedule's). Each
  schedule's micro-batch count: each count of the list that it accepts (1F1B and DualPipeV: at least one
  per stage; equal micro-batches) runs once first (a pilot run with half the steps) and the fastest is
  the one repeated (`--select all`: every count in every repeat, the best median wins). Every schedule
  is synchronous: with the same data its loss after N steps equals BP's (checked on a model without
  BatchNorm, whose statistics micro-batches change).
- **Language model** (`--model gpt_mini`, `--context`): uniformly random byte tokens, `lm_loss`; our
  engine runs the zoo's "text" path (`dataset="text"`, its loader swapped for the random tokens, SGD as
  everywhere). The rate is tokens/s: batch x context per step.
- **Steady state**: every process records its clocks when each tick (our engine: the start of
  `schedule.actions(t, k)`) or step (the others) begins. A run's rate is batch x steps / (wall time of
  those steps, the mean over its processes: in steady state they share one period, over a few steps
  they differ by how far one runs ahead), after the warm-up steps (and, for our engine, after the 2(K-1)
  ticks that fill the pipeline); the pipeline's drain and the final evaluation come after the window.
- **Interleaved medians**: each repeat runs every contender once, the order rotating from repeat to
  repeat, so a burst of load from elsewhere on the machine hits every contender alike.
- **Memory allocator**: by default (`--malloc all`) every process of every contender keeps freed memory
  for reuse (glibc `mallopt`, `torchdecoupled/engines/malloc.py`; our stage processes do this
  themselves). With glibc's defaults, every contender's steady state takes thousands of page faults per
  step (BP up to 50,000, some 100 ms of a 750 ms step here) as large activation buffers are returned to
  the system and taken again; `--malloc shipped` measures each system as it comes, `--malloc none`
  glibc's defaults everywhere.
- **Per process** (detail tables): the main thread's CPU time per batch (compute), the CPU of its other
  threads (gloo's transport threads; BP with 2 threads: the second thread), page faults per batch, for
  our engine the time it blocked on messages inside the window (from its timeline recorder) and its idle
  fraction, and its peak RSS (VmHWM, the torch library included).
"""

def batch_words(results: list[dict]) -> str:
    sizes = {r.get("batch") for r in results}
    if len(sizes) == 1:
        return str(sizes.pop())
    return ", ".join(f"{r['batch']} ({r['model']})" for r in results)


def data_words(results: list[dict]) -> str:
    lm = [r for r in results if r.get("unit") == "tokens"]
    words = []
    if len(lm) < len(results):
        words.append("CIFAR-shaped synthetic data (3 x 32 x 32, 10 classes; images/s)")
    if lm:
        words.append(f"uniformly random byte tokens (vocabulary 256, context {lm[0]['in_shape'][0]}, lm_loss; "
                     f"tokens/s = batch x context / step time)")
    return ", ".join(words)


def report(results: list[dict], meta: dict) -> str:
    """docs/speed.md: the table, the targets and their diagnosis, how it was measured, every run."""
    m = meta["machine"]
    out = ["# Speed: images/s (tokens/s for a language model), K = 2 on this machine\n",
           f"    {meta['command']}\n",
           f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, commit "
           f"{m['commit']} ; load average {meta['loadavg_before'][0]:.2f} "
           f"before, {meta['loadavg_after'][0]:.2f} after; {meta['elapsed_s']:.0f} s "
           f"in all (" + ", ".join(f"{r['model']} {r.get('elapsed_s', 0):.0f} s" for r in results) + ").\n",
           f"Batch {batch_words(results)}, K = {meta['stages']}, " + data_words(results) + "; "
           f"rates are medians of {meta['repeats']} interleaved runs, each timed over {meta['steps']} steady "
           f"steps after {meta['warmup']} warm-up steps (and the pipeline fill); malloc: {meta['malloc']}. "
           f"Pipelining: the best of {meta['microbatches']} micro-batches (m), "
           + ("chosen by one pilot run of each count before the repeats" if meta.get("select") == "pilot"
              else "every count in every repeat") + ".\n",
           markdown(results, meta), "", "## Targets\n"]
    for r in results:
        t = r["targets"]
        nan = float("nan")
        out.append(f"- **{r['model']}**: FDG = **{t.get('fdg_over_bp_1thread', nan):.2f}x** BP with 1 thread "
                   f"(paired {t.get('fdg_over_bp_1thread_paired', nan):.2f}x; target {TARGETS['fdg_over_bp_1thread']}x), "
                   f"**{t.get('fdg_over_best_pipelining', nan):.2f}x** the best torch.distributed.pipelining "
                   f"schedule (paired {t.get('fdg_over_best_pipelining_paired', nan):.2f}x; target "
                   f"{TARGETS['fdg_over_best_pipelining']}x); DTRP = {t.get('dtrp_over_bp_1thread', nan):.2f}x BP "
                   f"(target {TARGETS['dtrp_over_bp_1thread']}x). Cut after block "
                   f"{r['cuts']['stash']['boundaries']} (DTRP {r['cuts']['recompute']['boundaries']}) of "
                   f"{r['cuts'].get('layers', '?')}; the per-layer costs predicted stages of "
                   f"{r['cuts']['stash'].get('stage_ms', '?')} ms (DTRP {r['cuts']['recompute'].get('stage_ms', '?')})"
                   + (f"; the 2K pieces of the two-stage-per-rank schedules: cut after "
                      f"{r['cuts']['pieces']['boundaries']} ({r['cuts']['pieces'].get('stage_ms', '?')} ms)"
                      if "pieces" in r["cuts"] else "") + ".")
    for r in results:
        if r.get("pilot"):
            out.append(f"- {r['model']} pilot runs ({unit_short(r)}, one each): "
                       + ", ".join(f"`{k}` {v:.1f}" for k, v in r["pilot"].items()) + ".")
    out += ["", '("Paired": the median over repeats of the ratio within one repeat.)\n',
            "Where the speed-up over BP with 1 thread goes (`bench.decompose`; medians; product = speed-up): "
            "BP busy = BP's CPU / wall, work = BP's CPU / the stages' summed CPU per batch, balance = summed / "
            "busiest stage's CPU, busy = busiest stage's CPU / wall per batch.\n",
            "| model | contender | BP busy | work | balance | busy | speed-up | stage CPU ms/batch | wall ms/batch (BP) |",
            "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        for c in r["best"]:
            d = decompose(r, c)
            if d is None or c.startswith("bp_"):
                continue
            out.append(f"| {r['model']} | `{c}` | {d['bp_busy']:.2f} | {d['work']:.2f} | {d['balance']:.2f} | "
                       f"{d['busy']:.2f} | {d['speedup']:.2f} | {' / '.join(f'{x:.0f}' for x in d['cpu_ms'])} | "
                       f"{d['step_ms']:.0f} ({d['bp_step_ms']:.0f}) |")
    out += ["", NOTES_MARK, "", HOW]
    for r in results:
        out.append(f"## {r['model']}: every run\n")
        out.append(detail_table(r))
        out.append("")
    return "\n".join(out) + "\n"


NOTES_MARK = "<!-- notes: kept when the report is regenerated -->"


def write_report(path: str, results: list[dict], meta: dict) -> None:
    """Write the report, keeping any hand-written notes that follow NOTES_MARK up to the next heading."""
    text = report(results, meta)
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        old = ""
    if NOTES_MARK in old:
        notes = old.split(NOTES_MARK, 1)[1].split("\n## How it is measured", 1)[0].strip("\n")
        if notes:
            text = text.replace(NOTES_MARK, NOTES_MARK + "\n\n" + notes, 1)
    with open(path, "w") as f:
        f.write(text)
