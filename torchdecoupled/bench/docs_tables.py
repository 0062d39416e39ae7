"""Reading the measured tables back out of docs/*.md (the benchmarks write them; BENCHMARKS.md quotes them
and checks the papers' claims against them): Markdown tables, their numbers, a file's provenance lines."""
from __future__ import annotations

import os
import re

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def read(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def first_number(cell: str) -> float | None:
    """The first number in a table cell: ``"95.7 ± 0.5 (-0.5)"`` -> 95.7, ``"950.2 / 50.1"`` -> 950.2."""
    m = NUMBER.search(cell.replace("**", ""))
    return float(m.group()) if m else None


def numbers(cell: str) -> list[float]:
    return [float(v) for v in NUMBER.findall(cell)]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table of ``text`` as (header cells, body rows of cells), in order."""
    out, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2 and set("".join(block[1])) <= set("-: "):
            out.append((block[0], block[2:]))
        block = []
    return out


def table_lines(text: str, index: int = 0) -> list[str]:
    """The raw lines of table ``index`` (0: the first) of ``text``, for quoting."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found[index] if index < len(found) else []


def column(header: list[str], name: str) -> int | None:
    """Index of the column whose header, spaces removed, is ``name`` (e.g. "K=2" matches "K = 2")."""
    want = name.replace(" ", "").lower()
    for i, h in enumerate(header):
        if h.replace(" ", "").lower() == want:
            return i
    return None


def by_label(text: str | None, table: int = 0) -> dict[str, dict[str, float]]:
    """A results table as {row label: {column header without spaces: first number}}: e.g.
    ``by_label(accuracy_md)["FDG beta=1"]["K=2"] == 95.7``."""
    if not text:
        return {}
    found = tables(text)
    if table >= len(found):
        return {}
    header, rows = found[table]
    keys = [h.replace(" ", "") for h in header]
    return {r[0].strip("`* "): {k: first_number(c) for k, c in zip(keys[1:], r[1:]) if first_number(c) is not None}
            for r in rows if r}


def provenance(text: str | None) -> list[str]:
    """The file's "Command:" and "Machine:" lines (how and where its numbers were measured)."""
    if not text:
        return []
    return [line.rstrip() for line in text.splitlines() if line.startswith(("Command:", "Machine:"))]


def section(text: str | None, title_word: str) -> list[str]:
    """The lines of the first "## " section whose title contains ``title_word`` (case-insensitive), title
    excluded, up to the next "## " heading."""
    if not text:
        return []
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            if inside:
                break
            inside = title_word.lower() in line.lower()
            continue
        if inside:
            out.append(line)
    return out


def acceptance(text: str | None) -> list[tuple[str, bool]]:
    """docs/memory.md's acceptance lines: (the line, whether it ends in PASS)."""
    if not text:
        return []
    return [(line[2:].strip(), line.rstrip().endswith("PASS")) for line in text.splitlines()
            if line.startswith("- ") and line.rstrip().endswith(("PASS", "FAIL"))]


def memory_rows(text: str | None) -> list[dict]:
    """docs/memory.md's table: per row K, method, partition, stage 0's stored MB with the live graph."""
    if not text or not tables(text):
        return []
    header, rows = tables(text)[0]
    live = next((i for i, h in enumerate(header) if "live" in h), None)
    out = []
    for r in rows:
        if len(r) < len(header) or live is None or not r[0].isdigit() or not numbers(r[live]):
            continue
        out.append({"K": int(r[0]), "method": r[1], "partition": r[2].split(" ")[0],
                    "stage0_live_mb": numbers(r[live])[0], "stage0_mb": first_number(r[3])})
    return out
