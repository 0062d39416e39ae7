"""BENCHMARKS.md's section on the engine's targets that the speed run does not measure, quoted from the docs
files that hold their measurements: the simulator's overhead over a plain loop (docs/speed.md, written by
benchmarks/overhead.py), where decoupling starts to pay on small models (docs/speed.md, benchmarks/crossover.py)
and the planner's prediction error (docs/planner.md, benchmarks/plan_validate.py)."""
from __future__ import annotations

import re

from .docs_tables import section, tables

SIM_RATIO = 1.10  # BP with K = 1 in the simulator over a plain PyTorch loop, cnn1d_bn on MNIST-1D
PLAN_ERROR = 15.0  # % : the planner's largest error of the time per tick against measured runs

_SIM = re.compile(r"\*\*cnn1d_k1\*\* .*?ratio \*\*([\d.]+)\*\* \(([\d.]+)-([\d.]+)\)")
_PAYS = re.compile(r"FDG is (?:faster|slower) than BP[^\n]*")
_PLAN = re.compile(r"Largest error of the time per tick ([\d.]+) %[^\n]*")


def _commit(lines: list[str]) -> str:
    m = next((re.search(r"commit (\w+)", line) for line in lines if line.startswith("Machine:")), None)
    return f" (commit {m.group(1)})" if m else ""


def _match(text: str | None, title_word: str, pattern: re.Pattern) -> tuple[list[str], re.Match | None]:
    """The lines of the section titled with ``title_word`` and the first match of ``pattern`` in them."""
    lines = section(text, title_word)
    return lines, next((m for m in map(pattern.search, lines) if m), None)


def simulator_line(speed_md: str | None) -> str:
    lines, m = _match(speed_md, "Engine overhead per batch", _SIM)
    if m is None:
        return "- Simulator against a plain loop: not measured yet (`python benchmarks/overhead.py --doc docs/speed.md`)."
    ratio = float(m.group(1))
    word = "met" if ratio <= SIM_RATIO else "missed: the engine's fixed costs per batch, itemized in docs/speed.md"
    return (f"- Simulator, BP with K = 1 on cnn1d_bn (MNIST-1D), against a plain PyTorch loop interleaved batch "
            f"by batch: **{ratio:.3f}x** ({m.group(2)}-{m.group(3)}; target {SIM_RATIO:.2f}x): {word}, "
            f"\"Engine overhead per batch\"{_commit(lines)}.")


def small_model_line(speed_md: str | None) -> str:
    lines, pays = _match(speed_md, "where decoupling starts to pay", _PAYS)
    rows = [r for _, body in tables("\n".join(lines)) for r in body if r and r[0] == "cnn1d_bn"]
    if not rows or pays is None:
        return "- Small models: not measured yet (`python benchmarks/crossover.py --doc docs/speed.md`)."
    ratios = ", ".join(f"batch {r[1]}: {r[4].replace('**', '')}" for r in rows)
    beats = all(float(r[4].strip("*x")) > 1 for r in rows)
    word = "FDG beats BP there" if beats else "FDG does not beat BP there"
    return (f"- Small models, FDG K = 2 over BP with 1 thread on cnn1d_bn: {ratios}; {word}. {pays.group()} (docs/speed.md, "
            f"\"Small models: where decoupling starts to pay\", with the fixed costs per tick{_commit(lines)}).")


def planner_line(planner_md: str | None) -> str:
    _, m = _match(planner_md, "Validation", _PLAN)
    if m is None:
        return "- Planner: not validated yet (`python benchmarks/plan_validate.py`)."
    err = float(m.group(1))
    word = "met" if err <= PLAN_ERROR else ("missed: with more processes than cores, docs/planner.md, \"Reading the "
                                            "validation\"")
    return (f"- Planner (`torchdecoupled plan`) against measured runs of K = 2, 3, 4 and K = 2 x D = 2: largest error "
            f"of the time per tick **{err:.1f} %** (target {PLAN_ERROR:.0f} %): {word}.")


def other_targets_section(speed_md: str | None, planner_md: str | None) -> list[str]:
    return ["## The engine's other targets", "",
            "Measured by their own benchmarks and quoted here from the docs files they write (not re-measured by "
            "this run).", "", simulator_line(speed_md), small_model_line(speed_md), planner_line(planner_md), ""]
