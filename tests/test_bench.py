"""The speed benchmark's machinery runs end to end (a tiny MLP, two timed steps): no timing assertion."""
import json

from torchdecoupled import bench

TINY = dict(in_shape=(3, 4, 4), model_opts={"hidden": (8, 8)}, batch=8, warmup=0, steps=2, repeats=1,
            partition="1")


def test_every_contender_runs_and_reports(tmp_path, capsys):
    contenders = ["bp_1thread", "fdg", "dtrp", "pipelining_1f1b"]
    res = bench.bench_model("mlp", contenders, microbatches=(1, 2, 4), **TINY)  # 1F1B: m >= 2; pilot picks one
    assert list(res["images_per_s"]) == contenders
    assert all(v > 0 for v in res["images_per_s"].values())
    fdg = res["variants"]["fdg"]["ranks"]
    assert len(fdg) == 2 and all(r["rss_mb"] > 0 and 0 <= r["idle"] <= 1 for r in fdg)
    assert set(res["pilot"]) == {"pipelining_1f1b/m2", "pipelining_1f1b/m4"}
    assert res["best"]["pipelining_1f1b"]["microbatches"] in (2, 4)
    targets = bench.verdict(res)
    assert targets["fdg_over_bp_1thread"] > 0 and targets["fdg_over_bp_1thread_paired"] > 0
    assert targets["fdg_over_best_pipelining_paired"] > 0
    assert "| `fdg` |" in bench.markdown([res], {"stages": 2})
    meta = {"machine": {"platform": "p", "cpus": 2, "python": "3", "torch": "t", "commit": "c"}, "batch": 8,
            "stages": 2, "repeats": 1, "warmup": 0, "steps": 2, "microbatches": "1,2,4", "malloc": "all",
            "select": "pilot", "partition": "1", "loadavg_before": [0, 0, 0], "loadavg_after": [0, 0, 0],
            "elapsed_s": 1.0, "command": "speed"}
    details = tmp_path / "details.json"
    details.write_text(json.dumps({"meta": meta, "results": [res]}))
    doc = tmp_path / "speed.md"
    assert bench.main(["--render", str(details), "--doc", str(doc), "--quiet"]) == 0
    text = doc.read_text()
    assert "| `fdg` |" in text and "## Targets" in text and "## mlp: every run" in text
    doc.write_text(text.replace(bench.NOTES_MARK, bench.NOTES_MARK + "\n\nhand-written notes"))
    assert bench.main(["--render", str(details), "--doc", str(doc), "--quiet"]) == 0
    assert doc.read_text().count("hand-written notes") == 1  # notes survive a regeneration


def test_json_output_has_exactly_the_contenders(capsys, monkeypatch):
    fake = {"model": "m", "images_per_s": {c: 1.0 for c in bench.CONTENDERS}, "best": {}, "variants": {}, "cuts": {}}
    monkeypatch.setattr(bench.cli, "bench_model", lambda model, contenders, **kw: fake)  # run_cli looks it up there
    assert bench.main(["--json", "--quiet"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(bench.CONTENDERS)


def test_torchdecoupled_bench_subcommand(capsys, monkeypatch):
    from torchdecoupled import cli
    fake = {"model": "m", "images_per_s": {c: 2.0 for c in bench.CONTENDERS}, "best": {}, "variants": {}, "cuts": {}}
    monkeypatch.setattr(bench.cli, "bench_model", lambda model, contenders, **kw: fake)
    assert cli.main(["bench", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) == {c: 2.0 for c in bench.CONTENDERS}
    assert cli.main(["bench", "--contenders", "fdg,nope", "--quiet"]) == 2
    assert "unknown contender 'nope'" in capsys.readouterr().err
