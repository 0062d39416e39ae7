"""The Markdown of benchmarks/overhead.py: the tables of CPU time per batch and the section of docs/speed.md
it replaces (between its heading and the next one)."""
from __future__ import annotations

import os
import statistics

CASES = {  # name -> RunConfig fields
    "resnet20": dict(method="fdg", stages=2, dataset="synthetic", model="resnet20", batch_size=128, lr=0.1,
                     partition="4"),
    "cnn1d_k1": dict(method="bp", stages=1, dataset="mnist1d"),
    "cnn1d_k3": dict(method="bp", stages=3, dataset="mnist1d"),
}
TIMED = ("snapshot", "rng fork", "non-finite checks", "stored-bytes bookkeeping", "weight substitution",
         "data feed", "accuracy telemetry", "messages sent", "messages received")
MARK = "## Engine overhead per batch (CPU)"


def med(values) -> str:
    """Median (min-max) of a list of ms."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def sim_table(case: str, reps: list[dict]) -> list[str]:
    K = len(reps[0]["engine"])
    eng = [sum(r["engine"]) for r in reps]
    ops = [sum(r["model ops"]) for r in reps]
    plain = [r["plain"] for r in reps]
    ratio = [e / p for e, p in zip(eng, plain)]
    fields = CASES[case]
    lines = [f"**{case}** ({fields['model']  if 'model' in fields else 'cnn1d_bn'}, {fields['method']}, K = {K}, "
             f"simulator): engine {med(eng)} ms per batch, plain loop {med(plain)}, ratio **{statistics.median(ratio):.3f}** "
             f"({min(ratio):.3f}-{max(ratio):.3f}); the stage modules run plainly (model ops) {med(ops)}.", "",
             "| CPU ms per batch | " + " | ".join(f"stage {k}" for k in range(K)) + " | all stages |",
             "|---|" + "---:|" * (K + 1)]
    row = lambda name, per: lines.append(f"| {name} | " + " | ".join(per) + " |")  # noqa: E731
    row("engine", [f"{statistics.median(r['engine'][k] for r in reps):.2f}" for k in range(K)] + [med(eng)])
    row("model ops (what BP does)", [f"{statistics.median(r['model ops'][k] for r in reps):.2f}" for k in range(K)]
        + [med(ops)])
    over = [e - o for e, o in zip(eng, ops)]
    lines.append("| overhead (engine - model ops) | " + " | " * (K - 1) + f" | {med(over)} |")
    comps = {}
    for r in reps:
        for k, v in {**r["components"], **r["fixed"]}.items():
            comps.setdefault(k, []).append(v)
    for k, v in sorted(comps.items(), key=lambda kv: -statistics.median(kv[1])):
        lines.append(f"| - {k} | " + " | " * (K - 1) + f" | {med(v)} |")
    inst = [sum(r["instrumented"]) - sum(r["engine"]) for r in reps]
    rest = [o - sum(r["components"].values()) - sum(r["fixed"].values()) - max(i, 0)
            for o, r, i in zip(over, reps, inst)]
    lines.append("| - not attributed (overhead - the rows above - the timers' cost; < 0: the rows above are upper "
                 "bounds, or noise) | "
                 + " | " * (K - 1) + f" | {med(rest)} |")
    return lines + [""]


def dist_table(reps: list[list[dict]], plain: list[float] | None) -> list[str]:
    main = [[r[k]["main"] for r in reps] for k in range(2)]
    total = [a + b for a, b in zip(*main)]
    lines = [f"**resnet20 distributed** (FDG, K = 2, 2 processes x 1 thread): main-thread CPU per tick "
             f"stage 0 {med(main[0])}, stage 1 {med(main[1])}, together {med(total)} ms"
             + (f"; the plain loop (this process) {med(plain)}: work factor "
                f"**{statistics.median(plain) / statistics.median(total):.3f}** (the plain loop ran in the simulator "
                f"part of each repeat, up to a minute away from the stage processes on a machine whose speed drifts "
                f"by 10-40 % in that time: read the speed benchmark's work factor, measured side by side, instead)"
                if plain else "") + ".", "",
             "| CPU ms per batch | stage 0 | stage 1 |", "|---|---:|---:|"]
    lines.append(f"| main thread | {med(main[0])} | {med(main[1])} |")
    lines.append(f"| other threads (gloo) | {med([r[0]['other'] for r in reps])} | {med([r[1]['other'] for r in reps])} |")
    for name in TIMED:
        vals = [[r[k]["components"].get(name, 0.0) for r in reps] for k in range(2)]
        if any(any(v) for v in vals):
            lines.append(f"| - {name} | {med(vals[0])} | {med(vals[1])} |")
    return lines + [""]


def write_doc(path: str, section: list[str], mark: str = MARK) -> None:
    """Replace (or add, before "## How it is measured") the section that starts with ``mark``."""
    text = open(path).read() if os.path.exists(path) else ""
    body = "\n".join(section).rstrip() + "\n\n"
    if mark in text:
        head, rest = text.split(mark, 1)
        nxt = rest.find("\n## ")
        text = head + body + (rest[nxt + 1:] if nxt >= 0 else "")
    elif "\n## How it is measured" in text:
        text = text.replace("\n## How it is measured", "\n" + body + "## How it is measured", 1)
    else:
        text = text.rstrip() + "\n\n" + body
    with open(path, "w") as f:
        f.write(text)


