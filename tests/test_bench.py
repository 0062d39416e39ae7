"""The speed benchmark's machinery (tiny models, a few steps, no timing assertion): every contender runs and
reports, every torch.distributed.pipelining schedule places its pieces as drawn and computes BP's loss,
the language-model task counts tokens, and benchmarks/report.py writes BENCHMARKS.md from fake numbers."""
import importlib.util
import json
import math
import os

import pytest

from torchdecoupled import bench
from torchdecoupled.bench import claims, docs_tables, harness, summary

MLP = dict(model="mlp", in_shape=(3, 4, 4), model_opts={"hidden": (8, 8, 8)}, batch=8, stages=2)  # 4 blocks
TINY = dict(in_shape=(3, 4, 4), model_opts={"hidden": (8, 8, 8)}, batch=8, warmup=0, steps=2, repeats=1,
            partition="2", pieces="1,2,3")
SCHEDULES = ["pipelining_gpipe", "pipelining_1f1b", "pipelining_interleaved1f1b", "pipelining_loopedbfs",
             "pipelining_interleavedzerobubble", "pipelining_zbvzerobubble", "pipelining_dualpipev"]
DRAWN = {"single": [[0], [1]], "loop": [[0, 2], [1, 3]], "v": [[0, 3], [1, 2]]}  # rank -> pieces, K = 2


def test_the_contenders_are_every_torch_pipelining_schedule():
    from torch.distributed import pipelining
    assert list(bench.CONTENDERS) == ["bp_1thread", "bp_2threads", "fdg", "adl", "dtrp", *SCHEDULES]
    for c, (cls, style) in bench.PIPE.items():
        assert c == "pipelining_" + cls[len("Schedule"):].lower() and hasattr(pipelining, cls)
        assert bench.placement(style, 2) == DRAWN[style]
    assert bench.placement("v", 3) == [[0, 5], [1, 4], [2, 3]] and bench.placement("loop", 3) == [[0, 3], [1, 4], [2, 5]]


@pytest.mark.parametrize("c,m,bad", [("pipelining_1f1b", 1, True), ("pipelining_1f1b", 2, False),
                                     ("pipelining_dualpipev", 2, True), ("pipelining_dualpipev", 4, False),
                                     ("pipelining_interleaved1f1b", 5, True), ("pipelining_interleaved1f1b", 3, False),
                                     ("pipelining_gpipe", 3, True), ("pipelining_zbvzerobubble", 1, False)])
def test_microbatch_counts_follow_torchs_rules(c, m, bad):  # batch 12 (gpipe: 8, 3 does not divide it)
    assert (bench.microbatch_problem(c, m, 2, 8 if c == "pipelining_gpipe" else 12) is not None) == bad


def test_every_schedule_places_its_pieces_as_drawn_and_computes_bps_loss():
    """Synchronous schedules: after 3 SGD steps on the same batches the loss equals BP's (no BatchNorm:
    micro-batches would change its statistics); the pieces each rank holds are the drawn table and torch's."""
    steps = dict(warmup=0, steps=3)
    bp = harness.summarize_run(harness.run_job(bench.Job("bp_1thread", **MLP, **steps)))["loss"]
    first = harness.summarize_run(harness.run_job(bench.Job("bp_1thread", **MLP, warmup=0, steps=1)))["loss"]
    assert abs(first - bp) > 1e-3  # the steps moved the weights: equal losses are not the initial one's
    for c in SCHEDULES:
        style = bench.PIPE[c][1]
        cuts = (2,) if style == "single" else (1, 2, 3)
        raw = harness.run_job(bench.Job(c, **MLP, **steps, boundaries=cuts, microbatches=4))
        assert [r["pieces"] for r in raw["ranks"]] == DRAWN[style], c
        if style != "single":
            assert {int(s): r for s, r in raw["ranks"][0]["torch_placement"].items()} == {
                s: r for r, ps in enumerate(DRAWN[style]) for s in ps}, c
        assert harness.summarize_run(raw)["loss"] == pytest.approx(bp, rel=1e-5), c


def test_every_contender_runs_and_reports(tmp_path):
    contenders = ["bp_1thread", "fdg", "pipelining_1f1b", "pipelining_zbvzerobubble"]
    res = bench.bench_model("mlp", contenders, microbatches=(1, 2, 4), **TINY)  # 1F1B: m >= 2; pilot picks one
    assert list(res["per_s"]) == contenders and res["unit"] == "images"
    assert all(v > 0 for v in res["per_s"].values())
    fdg = res["variants"]["fdg"]["ranks"]
    assert len(fdg) == 2 and all(r["rss_mb"] > 0 and 0 <= r["idle"] <= 1 for r in fdg)
    assert set(res["pilot"]) == {"pipelining_1f1b/m2", "pipelining_1f1b/m4", "pipelining_zbvzerobubble/m1",
                                 "pipelining_zbvzerobubble/m2", "pipelining_zbvzerobubble/m4"}
    assert res["best"]["pipelining_1f1b"]["microbatches"] in (2, 4) and res["cuts"]["pieces"]["boundaries"] == [1, 2, 3]
    targets = bench.verdict(res)
    assert targets["fdg_over_bp_1thread"] > 0 and targets["fdg_over_best_pipelining_paired"] > 0
    meta = {"machine": {"platform": "p", "cpus": 2, "python": "3", "torch": "t", "commit": "c"}, "batch": 8,
            "stages": 2, "repeats": 1, "warmup": 0, "steps": 2, "microbatches": "1,2,4", "malloc": "all",
            "select": "pilot", "partition": "2", "loadavg_before": [0, 0, 0], "loadavg_after": [0, 0, 0],
            "elapsed_s": 1.0, "command": "speed"}
    details = tmp_path / "details.json"
    details.write_text(json.dumps({"meta": meta, "results": [res]}))
    doc = tmp_path / "speed.md"
    assert bench.main(["--render", str(details), "--doc", str(doc), "--quiet"]) == 0
    text = doc.read_text()
    assert "| `pipelining_zbvzerobubble` |" in text and "## Targets" in text and "## mlp: every run" in text
    doc.write_text(text.replace(bench.NOTES_MARK, bench.NOTES_MARK + "\n\nhand-written notes"))
    assert bench.main(["--render", str(details), "--doc", str(doc), "--quiet"]) == 0
    assert doc.read_text().count("hand-written notes") == 1  # notes survive a regeneration


def test_language_model_counts_tokens_and_runs_on_every_engine():
    job = bench.Job("bp_1thread", "gpt", batch=4, in_shape=(16,), warmup=0, steps=2)
    marks = [(0, 0, 0, 0), (10**9, 0, 0, 0), (3 * 10**9, 0, 0, 0)]  # 2 steps in 3 s
    fake = harness.summarize_run({"job": job, "ranks": [{"marks": marks, "rss_mb": 1.0, "loss": 5.0}]})
    assert fake["per_s"] == pytest.approx(4 * 16 * 2 / 3)  # batch x context tokens per step
    gpt = {"model_opts": {"layers": 2, "width": 16, "heads": 2}, "batch": 4, "context": 8, "warmup": 0, "steps": 2,
           "repeats": 1, "partition": "2", "microbatches": (2,)}
    res = bench.bench_model("gpt", ["bp_1thread", "fdg", "pipelining_dualpipev"], **{**gpt, "microbatches": (4,)})
    assert res["unit"] == "tokens" and res["in_shape"] == [8] and all(v > 0 for v in res["per_s"].values())
    assert res["variants"]["fdg"]["loss"] == pytest.approx(math.log(256), rel=0.05)  # random tokens: ln V


def test_json_output_and_the_subcommand(capsys, monkeypatch):
    from torchdecoupled import cli
    fake = {"model": "m", "per_s": {c: 2.0 for c in bench.CONTENDERS}, "best": {}, "variants": {}, "cuts": {},
            "unit": "images"}
    monkeypatch.setattr(bench.cli, "bench_model", lambda model, contenders, **kw: fake)  # run_cli looks it up there
    assert bench.main(["--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) == {c: 2.0 for c in bench.CONTENDERS}
    assert cli.main(["bench", "--json", "--quiet", "--model", "gpt_mini", "--context", "32"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(bench.CONTENDERS)
    assert cli.main(["bench", "--contenders", "fdg,nope", "--quiet"]) == 2
    assert "unknown contender 'nope'" in capsys.readouterr().err


def test_an_old_details_file_renders():
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "speed_details.json")) as f:
        saved = json.load(f)
    r = bench.upgrade(saved["results"][0], saved["meta"])
    assert r["per_s"]["fdg"] > 0 and r["unit"] == "images" and "| `fdg` |" in bench.markdown([r], saved["meta"])


def _report_module():
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "report.py")
    spec = importlib.util.spec_from_file_location("bench_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ACCURACY = """# Test accuracy
| method | K=2 | K=3 |
|---|---|---|
| BP | 96.0 ± 0.2 | 96.0 ± 0.2 |
| DDG | 95.5 ± 0.5 (-0.5) | 93.0 ± 0.9 (-3.0) |
| FDG beta=1 | 95.7 (-0.3) | 95.0 (-1.0) |
| FDG beta=0.5 | 95.9 (-0.1) | 95.7 (-0.3) |
| ADL M=2 | 95.8 (-0.2) | 95.2 (-0.8) |

Command: `python benchmarks/accuracy.py --seeds 0`  
Machine: fake machine, commit abc
"""
MEMORY = """# Stored bytes
Command: `python benchmarks/memory.py`  
Machine: fake

| K | method | partition (blocks per stage) | peak stored, MB | + live graph, MB | held | stage 0 / FDG | with live graph |
|---|---|---|---|---|---|---:|---:|
| 4 | fdg | params (1/1/1/1) | 900.0 / 1.0 | 900.0 / 1.0 | 6/0 | 1.000 | 1.000 |
| 4 | dsp | params (1/1/1/1) | 3.0 / 1.0 | 400.0 / 1.0 | 6/0 | 0.003 | 0.444 |

- dsp (params): 0.003 of FDG's stage 0 (0.444 with the live graph): FAIL
"""


def test_report_writes_benchmarks_md_from_fake_measurements(tmp_path, monkeypatch):
    report = _report_module()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "accuracy.md").write_text(ACCURACY)
    (tmp_path / "docs" / "memory.md").write_text(MEMORY)
    (tmp_path / "docs" / "lm.md").write_text("# LM\nCommand: `python benchmarks/lm.py`\n\n| method | K=2 |\n|---|---|\n"
                                           "| BP | 2.10 |\n\n## The CNN papers' claims on a transformer\n\n- FDG: x\n")

    def fake_bench(model, contenders, **kw):  # no timing: FDG 2x BP, ADL slower than FDG; one schedule fails
        if "pipelining_loopedbfs" in contenders:
            raise bench.BenchError("pipelining_loopedbfs/m4 rank 1: RuntimeError: boom")
        rate = {c: 100.0 for c in contenders} | {"bp_1thread": 50.0, "fdg": 100.0, "adl": 90.0, "dtrp": 40.0}
        best = {c: {"per_s": v, "microbatches": 4 if c.startswith("pipelining_") else 0, "all": [v]}
                for c, v in rate.items()}
        return {"model": model, "unit": "tokens" if model == "gpt_mini" else "images", "batch": 32, "in_shape": [64],
                "per_s": rate, "best": best, "variants": {}, "cuts": {}, "pilot": {}}

    monkeypatch.setattr(report.os, "getloadavg", lambda: (7.0, 7.0, 7.0))  # "other jobs" on 2 CPUs
    monkeypatch.setattr(report, "machine", lambda: {"platform": "p", "cpus": 2, "python": "3", "torch": "2.13",
                                                    "commit": "c0ffee"})
    assert report.main(["--root", str(tmp_path), "--quiet"], bench=fake_bench) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "The machine was loaded while this ran" in text and "commit c0ffee" in text
    assert "`pipelining_loopedbfs` does not run here" in text and "RuntimeError: boom" in text
    assert "6 of its 7 schedules run" in text and "| `pipelining_dualpipev` | 100.0 (m=4) |" in text
    assert "gpt_mini tok/s" in text and "resnet20 img/s" in text
    verdicts = {(c["paper"], c["claim"]): c["verdict"] for c in
                claims.accuracy_claims(ACCURACY, None, None) + claims.memory_claims(MEMORY)}
    assert verdicts["FDG (TNNLS 2021)", "generalization comparable to BP"] == claims.HOLDS  # -1.0 is within 1.0
    assert verdicts["DDG (ICML 2018)", "no loss of accuracy"] == claims.FAILS
    assert claims.FAILS in [v for (p, _), v in verdicts.items() if p.startswith("DTRP")]  # the memory FAIL line
    assert "| FDG (TNNLS 2021) | acceleration over BP" in text and "(2.00x)" in text
    assert "| ADL (ICML 2021) | the fastest training speed" in text  # loaded: the numbers' verdict, not judged
    assert "| not judged: the machine was loaded | measured, does not hold here: resnet20: adl 90" in text
    speed = {c["claim"][:12]: c["verdict"] for c in claims.speed_claims(saved_results(tmp_path))}
    assert speed["acceleration"] == claims.HOLDS and speed["the fastest "] == claims.FAILS
    assert "Quoted from [docs/accuracy.md]" in text and "Machine: fake machine, commit abc" in text
    assert "| BP | 2.10 |" in text and "Its claims, as docs/lm.md states them:\n\n- FDG: x" in text
    assert "| dsp | params (1/1/1/1) |" in text
    for png in ("bench_speed.png", "bench_memory.png", "bench_accuracy.png"):
        assert (tmp_path / "docs" / png).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "docs" / "bench_speed.json").read_text())
    assert saved["meta"]["failed"] == {"pipelining_loopedbfs": "pipelining_loopedbfs/m4 rank 1: RuntimeError: boom"}
    (tmp_path / "docs" / "lm.md").unlink()
    assert report.main(["--root", str(tmp_path), "--quiet", "--speed-from", str(tmp_path / "docs" / "bench_speed.json"),
                        "--out", "again.md"], bench=None) == 0
    again = (tmp_path / "again.md").read_text()
    assert again.count("does not run here") == 1 and "docs/lm.md does not exist yet" in again


def saved_results(root) -> list[dict]:
    return json.loads((root / "docs" / "bench_speed.json").read_text())["results"]


def test_docs_tables_read_the_benchmarks_tables():
    acc = docs_tables.by_label(ACCURACY)
    assert acc["DDG"] == {"K=2": 95.5, "K=3": 93.0} and docs_tables.provenance(ACCURACY)[0].startswith("Command:")
    assert docs_tables.memory_rows(MEMORY)[1] == {"K": 4, "method": "dsp", "partition": "params",
                                                  "stage0_live_mb": 400.0, "stage0_mb": 3.0}
    assert not summary.loaded({"machine": {"cpus": 2}, "loadavg_before": [0.3], "loadavg_after": [2.2]})


def test_targets_verdict_names_what_is_missed():
    from torchdecoupled.bench.report import TARGETS
    from torchdecoupled.bench.summary import _met
    res = {"per_s": {"bp_1thread": 100.0, "fdg": 195.0, "dtrp": 140.0, "pipelining_1f1b": 160.0}, "best": {}}
    t = bench.verdict(res)
    assert t == {"fdg_over_bp_1thread": 1.95, "dtrp_over_bp_1thread": 1.4, "fdg_over_best_pipelining": 1.219}
    assert TARGETS == {"fdg_over_bp_1thread": 1.9, "dtrp_over_bp_1thread": 1.5, "fdg_over_best_pipelining": 1.2}
    assert _met(t).startswith(": missed (dtrp / bp_1thread;")
    assert _met({**t, "dtrp_over_bp_1thread": 1.5}) == ": all met"
    assert _met({}) == ""


SPEED_MD = """## Engine overhead per batch (CPU)

Machine: Linux, 2 CPUs, torch 2.13.0+cpu, commit abc1234; load average 0.5 at the end.

**cnn1d_k1** (cnn1d_bn, bp, K = 1, simulator): engine 2.00 (1.9-2.1) ms per batch, plain loop 1.70 (1.6-1.8), ratio **1.176** (1.150-1.190); the stage modules run plainly (model ops) 1.6.

## Small models: where decoupling starts to pay

Machine: Linux, 2 CPUs, torch 2.13.0+cpu, commit def5678; load average 1.0 at the end.

| model | batch | BP ms/step | FDG ms/tick | FDG / BP (images/s) | stage CPU ms/tick |
|---|---:|---:|---:|---:|---|
| cnn1d_bn | 50 | 1.50 | 3.00 | **0.50x** | 1 / 1 |
| resnet20 | 1 | 9.00 | 7.00 | **1.29x** | 6 / 6 |

FDG is faster than BP here from a BP step of 9.0 ms up and slower at 1.5 ms and below.
"""
PLANNER_MD = """## Validation: predicted against measured, this machine

Largest error of the time per tick 12.5 % (target: within 15 %): met; of a stage's CPU time per tick 9.0 %.
"""


def test_the_engines_other_targets_are_quoted_with_their_verdicts():
    from torchdecoupled.bench.other_targets import other_targets_section
    lines = other_targets_section(SPEED_MD, PLANNER_MD)
    sim, small, plan = [line for line in lines if line.startswith("- ")]
    assert "**1.176x** (1.150-1.190; target 1.10x): missed" in sim and "(commit abc1234)" in sim
    assert "batch 50: 0.50x; FDG does not beat BP there. FDG is faster than BP here from a BP step of 9.0 ms" in small
    assert "(commit def5678)" in small
    assert "**12.5 %** (target 15 %): met." in plan
    met = other_targets_section(SPEED_MD.replace("**1.176**", "**1.080**"), PLANNER_MD.replace("12.5 %", "27.2 %"))
    assert "**1.080x** (1.150-1.190; target 1.10x): met" in met[4] and "**27.2 %** (target 15 %): missed" in met[6]
    empty = other_targets_section(None, None)
    assert all("not measured yet" in line or "not validated yet" in line for line in empty if line.startswith("- "))
