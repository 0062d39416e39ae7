"""BENCHMARKS.md (``benchmarks/report.py``, ``make bench``): the speed run side by side, the memory and
accuracy tables of docs/ (re-measured in the full mode, quoted in the quick one), the papers' claims
marked holds / does not hold here, the figures, and where every number comes from."""
from __future__ import annotations

from . import claims as claims_mod
from .docs_tables import acceptance, provenance, section, table_lines
from .jobs import PIPE
from .other_targets import other_targets_section
from .report import TARGETS, batch_words, data_words, markdown, unit_short, verdict

LOADED = 0.5  # a load average per CPU above this before the run: other jobs were running
DOCS = {"memory": "docs/memory.md", "accuracy": "docs/accuracy.md", "accuracy_methods": "docs/accuracy_methods.md",
        "accuracy_nobn": "docs/accuracy_cnn1d_nobn.md", "lm": "docs/lm.md", "speed": "docs/speed.md",
        "planner": "docs/planner.md"}


def _met(t: dict) -> str:
    """": met" / ": missed ..." over the targets measured."""
    missed = [k for k, goal in TARGETS.items() if k in t and t[k] < goal]
    if not missed:
        return ": all met" if any(k in t for k in TARGETS) else ""
    return ": missed (" + ", ".join(k.replace("_over_", " / ") for k in missed) + "; the measured reasons: " \
        "docs/speed.md, \"Where a stage process's CPU goes\")"


def loaded(meta: dict) -> bool:
    """Whether other jobs loaded the machine: a 1-minute load average above LOADED per CPU before the run,
    or above the run's own processes (one per CPU) plus one during it."""
    cpus = meta["machine"].get("cpus") or 1
    before, after = meta["loadavg_before"][0], meta["loadavg_after"][0]
    return before > LOADED * cpus or after > cpus + 1


def _where(meta: dict) -> str:
    m = meta["machine"]
    return (f"{m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, commit {m['commit']}")


def header(meta: dict, speed_meta: dict | None) -> list[str]:
    out = ["# Benchmarks: speed, memory, accuracy, and the papers' claims", ""]
    if speed_meta and loaded(speed_meta):
        lb, la = speed_meta["loadavg_before"][0], speed_meta["loadavg_after"][0]
        out += [f"> **The machine was loaded while this ran** (load average {lb:.1f} before the speed run, {la:.1f} "
                f"after it, on {speed_meta['machine']['cpus']} CPUs: other jobs shared them). The speed numbers "
                "are disturbed; rerun `make bench` on a quiet machine before quoting them.", ""]
    out += [f"    {meta['command']}", "",
            f"Mode: **{meta['mode']}** ({meta.get('mode_words', '')}). Machine: {_where(meta)}; "
            f"{meta['elapsed_s']:.0f} s in all. Sections that this run did not re-measure quote the docs file they "
            "come from, with the command, machine and commit that made it.", "",
            "Modes: `make bench` is the quick mode (under 5 minutes on a quiet 2-core machine: the speed run "
            "re-measured, the rest quoted); `make bench FULL=1` the full one (about half an hour: the speed run on "
            "three models, memory and the MNIST-1D accuracy of docs/accuracy.md re-measured).", ""]
    return out


def speed_section(speed: dict | None, figure: str) -> list[str]:
    out = ["## Speed", ""]
    if not speed:
        return out + ["Not measured in this run.", ""]
    results, meta = speed["results"], speed["meta"]
    for r in results:
        r.setdefault("targets", verdict(r))
    out += [f"    {meta['command']}", "",
            f"Measured on {_where(meta)}; load average {meta['loadavg_before'][0]:.2f} before, "
            f"{meta['loadavg_after'][0]:.2f} after; {meta['elapsed_s']:.0f} s. Batch {batch_words(results)}, "
            f"K = {meta['stages']}, {data_words(results)}; medians of {meta['repeats']} interleaved runs of "
            f"{meta['steps']} steady steps after {meta['warmup']} warm-up steps; pipelining: the best of "
            f"{meta['microbatches']} micro-batches (m). Every contender is 2 processes x 1 thread except BP (1 x 1, "
            "1 x 2). How it is measured: [docs/speed.md](docs/speed.md#how-it-is-measured).", "",
            markdown(results, meta), "", f"![speed]({figure})", ""]
    for r in results:
        t, nan = r["targets"], float("nan")
        out.append(f"- **{r['model']}** ({unit_short(r)}): FDG = {t.get('fdg_over_bp_1thread', nan):.2f}x BP with 1 "
                   f"thread (target {TARGETS['fdg_over_bp_1thread']}x), {t.get('fdg_over_best_pipelining', nan):.2f}x "
                   f"the best torch.distributed.pipelining schedule (target {TARGETS['fdg_over_best_pipelining']}x); "
                   f"DTRP = {t.get('dtrp_over_bp_1thread', nan):.2f}x BP (target {TARGETS['dtrp_over_bp_1thread']}x)"
                   + _met(t) + ".")
    out += ["", *schedules_line(speed), "",
            "Every run, per process (CPU, page faults, time blocked on messages, peak RSS, the loss after the run): "
            "`python benchmarks/speed.py --render docs/bench_speed.json --doc FILE`.", ""]
    return out


def schedules_line(speed: dict) -> list[str]:
    failed = speed["meta"].get("failed", {})
    ran = [c for c in PIPE if c not in failed]
    names = ", ".join(PIPE[c][0][len("Schedule"):] for c in ran)
    torch = speed["meta"]["machine"]["torch"]
    out = [f"torch.distributed.pipelining (torch {torch}, gloo on CPU): {len(ran)} of its {len(PIPE)} schedules run "
           f"here on 2 ranks and are in the table ({names})."]
    for c, err in failed.items():
        out.append(f"- `{c}` does not run here, and is left out of the default contenders: `{err}`")
    return out


def quoted(name: str, text: str | None, measured: bool) -> list[str]:
    if text is None:
        return [f"{DOCS[name]} does not exist yet.", ""]
    how = "Re-measured in this run" if measured else f"Quoted from [{DOCS[name]}]({DOCS[name]}) (not re-measured)"
    return [f"{how}. " + " ".join(provenance(text)), ""]


def memory_section(text: str | None, measured: bool, figure: str | None) -> list[str]:
    out = ["## Memory: stored bytes per stage", "", *quoted("memory", text, measured)]
    if text:
        out += table_lines(text) + [""] + [f"- {line}" for line, _ in acceptance(text)] + [""]
        out += [f"![memory]({figure})", ""] if figure else []
    return out


def accuracy_section(docs: dict, measured: set, figure: str | None) -> list[str]:
    out = ["## Accuracy", "", "### MNIST-1D: BP against the delayed-gradient methods", "",
           *quoted("accuracy", docs.get("accuracy"), "accuracy" in measured)]
    out += table_lines(docs["accuracy"]) + [""] if docs.get("accuracy") else []
    out += ["### MNIST-1D: recomputation, weight prediction, local learning", "",
            *quoted("accuracy_methods", docs.get("accuracy_methods"), False)]
    out += table_lines(docs["accuracy_methods"]) + [""] if docs.get("accuracy_methods") else []
    out += ["### MNIST-1D without BatchNorm (cnn1d)", "", *quoted("accuracy_nobn", docs.get("accuracy_nobn"), False)]
    out += table_lines(docs["accuracy_nobn"]) + [""] if docs.get("accuracy_nobn") else []
    out += [f"![accuracy]({figure})", ""] if figure else []
    out += ["### Language model (gpt_mini, byte-level text)", ""]
    lm = docs.get("lm")
    if lm is None:
        out += ["docs/lm.md does not exist yet (`python benchmarks/lm.py` writes it).", ""]
    else:
        out += [*quoted("lm", lm, False), *table_lines(lm), ""]
        claims = section(lm, "claims")
        if claims:
            out += ["Its claims, as docs/lm.md states them:", "", *[line for line in claims if line.strip()], ""]
    return out


def render(meta: dict, speed: dict | None, docs: dict, measured: set, figures: dict) -> str:
    """BENCHMARKS.md's text. ``meta``: mode, command, machine, elapsed_s; ``speed``: {"results", "meta"}
    of the bench (None: not run); ``docs``: {DOCS key: the file's text or None}; ``measured``: the DOCS
    keys this run re-measured; ``figures``: {"speed" | "memory" | "accuracy": path relative to the report}."""
    found = (claims_mod.accuracy_claims(docs.get("accuracy"), docs.get("accuracy_methods"), docs.get("accuracy_nobn"))
             + claims_mod.memory_claims(docs.get("memory"))
             + (claims_mod.speed_claims(speed["results"], loaded(speed["meta"])) if speed else []))
    verdicts = (claims_mod.HOLDS, claims_mod.FAILS, claims_mod.UNJUDGED)
    counts = {v: sum(c["verdict"] == v for c in found) for v in verdicts}
    out = header(meta, speed["meta"] if speed else None)
    out += ["## The papers' claims, here", "",
            f"{counts[claims_mod.HOLDS]} hold, {counts[claims_mod.FAILS]} do not hold here, "
            f"{counts[claims_mod.UNJUDGED]} not judged (measured on a loaded machine), "
            f"{len(found) - sum(counts.values())} not measured. Comparable accuracy = within "
            f"{claims_mod.TOLERANCE:.1f} point of BP's mean at every K; a speed claim = faster on every model of the "
            "speed run. The decoupled methods' speed is theirs on one core per stage (K = 2).", "",
            *claims_mod.claims_table(found), ""]
    out += speed_section(speed, figures.get("speed", ""))
    out += other_targets_section(docs.get("speed"), docs.get("planner"))
    out += memory_section(docs.get("memory"), "memory" in measured, figures.get("memory"))
    out += accuracy_section(docs, measured, figures.get("accuracy"))
    return "\n".join(out).rstrip() + "\n"

