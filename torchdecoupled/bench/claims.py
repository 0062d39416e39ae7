"""The papers' claims, each checked against what this machine measured: holds / does not hold here / not
measured here, with the numbers that decide it.

The papers (abstracts in the project's seed records): FDG, Zhuang et al., IEEE TNNLS 2021 ("comparable or
better results ... in terms of generalization and acceleration"; "able to train various networks");
ADL, Zhuang et al., ICML 2021 ("promising generalization", "the fastest training speed among the
compared methods"); DTRP, Peng et al., PLOS ONE 2023 ("comparable or better results than ... BP", "the
memory explosion problem is effectively solved, and a significant acceleration is achieved"); DDG, Huo et
al., ICML 2018 ("significant speedup without loss of accuracy"); local learning, DGL (Belilovsky et al.,
ICML 2020), InfoPro (Wang et al., ICLR 2021), Peng, NTU 2021 ("comparable or better results").

"Comparable accuracy" is read as: the method's mean test accuracy within ``TOLERANCE`` points of BP's at
every K measured (MNIST-1D has 1000 test samples: 1 point is 10 samples). A speed claim holds when the
rate of the method (FDG, ADL, DTRP on our distributed engine, K = 2) beats the one it is compared with,
on every model of the speed run.
"""
from __future__ import annotations

from .docs_tables import acceptance, by_label

TOLERANCE = 1.0  # points of test accuracy
HOLDS, FAILS, UNMEASURED = "holds", "does not hold here", "not measured here"
UNJUDGED = "not judged: the machine was loaded"  # a speed claim from a disturbed run


def _claim(paper: str, claim: str, source: str, verdict: str, evidence: str) -> dict:
    return {"paper": paper, "claim": claim, "source": source, "verdict": verdict, "evidence": evidence}


def near_bp(table: dict, labels: list[str], bp: str, source: str) -> tuple[str, str]:
    """(verdict, evidence): every row of ``labels`` within TOLERANCE of row ``bp`` in every K column."""
    if bp not in table or not any(lab in table for lab in labels):
        return UNMEASURED, f"{source} has no such table"
    ref, parts, ok = table[bp], [], True
    for lab in labels:
        for k, v in table.get(lab, {}).items():
            if k in ref:
                gap = round(v - ref[k], 1)  # of the tables' rounded means
                ok &= gap >= -TOLERANCE
                parts.append(f"{lab} {k}: {v:.1f} ({gap:+.1f})")
    return (HOLDS if ok else FAILS), f"BP {ref[next(iter(ref))]:.1f}; " + ", ".join(parts)


def accuracy_claims(accuracy_md: str | None, methods_md: str | None, nobn_md: str | None) -> list[dict]:
    acc, meth, nobn = by_label(accuracy_md), by_label(methods_md), by_label(nobn_md)
    src, msrc, nsrc = "docs/accuracy.md", "docs/accuracy_methods.md", "docs/accuracy_cnn1d_nobn.md"
    rows = [("FDG (TNNLS 2021)", "generalization comparable to BP", src,
             near_bp(acc, ["FDG beta=1", "FDG beta=0.5"], "BP", src)),
            ("ADL (ICML 2021)", "promising generalization (comparable to BP)", src,
             near_bp(acc, ["ADL M=2"], "BP", src)),
            ("DDG (ICML 2018)", "no loss of accuracy", src, near_bp(acc, ["DDG"], "BP", src)),
            ("DTRP (PLOS ONE 2023)", "accuracy comparable to BP (weight prediction: momentum, the default)", msrc,
             near_bp(meth, ["dtrp, predictor momentum"], "bp", msrc)),
            ("DTRP (PLOS ONE 2023)", "accuracy comparable to BP (weight prediction: delta)", msrc,
             near_bp(meth, ["dtrp, predictor delta"], "bp", msrc)),
            ("DGL (ICML 2020); Peng (NTU 2021)", "local learning comparable to BP", msrc,
             near_bp(meth, ["dgl"], "bp", msrc)),
            ("InfoPro (ICLR 2021); Peng (NTU 2021)", "local learning comparable to BP", msrc,
             near_bp(meth, ["infopro"], "bp", msrc)),
            ("FDG (TNNLS 2021)", "trains various networks decoupled: a CNN without BatchNorm", nsrc,
             near_bp(nobn, ["FDG beta=1", "FDG beta=0.5"], "BP", nsrc))]
    return [_claim(p, c, s, v, e) for p, c, s, (v, e) in rows]


def memory_claims(memory_md: str | None) -> list[dict]:
    lines = acceptance(memory_md)
    paper = "DTRP (PLOS ONE 2023)"
    claim = "recomputation solves the memory explosion (stage 0 at K = 4: <= 1/3 of FDG's)"
    if not lines:
        return [_claim(paper, claim, "docs/memory.md", UNMEASURED, "docs/memory.md has no acceptance lines")]
    verdict = HOLDS if all(ok for _, ok in lines) else FAILS
    return [_claim(paper, claim, "docs/memory.md", verdict, "; ".join(text for text, _ in lines))]


def _faster(results: list[dict], fast: str, slow: list[str]) -> tuple[str, str]:
    parts, ok, seen = [], True, False
    for r in results:
        rate = r["per_s"]
        others = [c for c in slow if c in rate]
        if fast not in rate or not others:
            continue
        best = max(others, key=lambda c: rate[c])
        seen = True
        ok &= rate[fast] > rate[best]
        parts.append(f"{r['model']}: {fast} {rate[fast]:.0f} vs {best} {rate[best]:.0f} "
                     f"({rate[fast] / rate[best]:.2f}x)")
    return (HOLDS if ok else FAILS) if seen else UNMEASURED, "; ".join(parts) or "not in this speed run"


def speed_claims(results: list[dict], loaded: bool = False) -> list[dict]:
    """The acceleration claims against this run's speed table (K = 2, one thread per process). On a
    loaded machine (other jobs take the CPUs that the stage processes need) none is judged: the verdict
    the numbers would give goes into the evidence."""
    pipes = sorted({c for r in results for c in r["per_s"] if c.startswith("pipelining_")})
    src = "the speed run above"
    rows = [("FDG (TNNLS 2021)", "acceleration over BP (on one core per stage vs BP on one core)",
             _faster(results, "fdg", ["bp_1thread"])),
            ("FDG (TNNLS 2021)", "faster than the best synchronous pipeline (torch.distributed.pipelining)",
             _faster(results, "fdg", pipes)),
            ("ADL (ICML 2021)", "the fastest training speed among the compared methods (FDG, DTRP, pipelining)",
             _faster(results, "adl", ["fdg", "dtrp", *pipes])),
            ("DTRP (PLOS ONE 2023)", "significant acceleration over BP", _faster(results, "dtrp", ["bp_1thread"]))]
    out = [_claim(p, c, src, UNJUDGED, f"measured, {v}: {e}") if loaded and v != UNMEASURED else _claim(p, c, src, v, e)
           for p, c, (v, e) in rows]
    out.append(_claim("DDG (ICML 2018)", "significant speedup", src, UNMEASURED,
                      "DDG is forward-locked: the speed benchmark runs the fully decoupled methods only"))
    return out


def claims_table(claims: list[dict]) -> list[str]:
    lines = ["| paper | claim | here | evidence | from |", "|---|---|---|---|---|"]
    for c in claims:
        mark = {HOLDS: "**holds**", FAILS: "**does not hold here**"}.get(c["verdict"], c["verdict"])
        lines.append(f"| {c['paper']} | {c['claim']} | {mark} | {c['evidence']} | {c['source']} |")
    return lines
