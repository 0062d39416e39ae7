"""The command line and the run directory: metrics.jsonl, summary.json, determinism, clear errors."""
import json

import pytest

from torchdecoupled.cli import main

TINY = ["--dataset", "digits", "--model", "mlp", "--epochs", "2", "--batch-size", "64", "--no-progress"]


def run_train(tmp_path, name, *extra):
    out = tmp_path / name
    assert main(["train", "--out", str(out), *TINY, *extra]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records, json.loads((out / "summary.json").read_text())


def test_train_writes_metrics_and_summary(tmp_path):
    records, summary = run_train(tmp_path, "a", "--method", "fdg", "--stages", "3")
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert {"epoch", "train_loss", "test_acc", "staleness"} <= set(r)
        assert 0.0 <= r["test_acc"] <= 1.0
        assert len(r["staleness"]["mean"]) == len(r["staleness"]["max"]) == 3
    assert records[-1]["staleness"]["max"] == [3, 1, 0]  # FDG order bf: d_k - 1
    assert summary["test_acc"] == records[-1]["test_acc"]
    assert len(summary["params_sha256"]) == 64
    assert len(summary["peak_stored_bytes"]) == 3
    _, again = run_train(tmp_path, "b", "--method", "fdg", "--stages", "3",
                         "--partition", ",".join(map(str, summary["boundaries"])))
    assert again["params_sha256"] == summary["params_sha256"]  # the recorded cuts reproduce the run
    assert summary["test_acc"] > 0.5  # it learns something in two epochs


def test_same_command_twice_same_numbers(tmp_path):
    r1, s1 = run_train(tmp_path, "a", "--method", "adl", "--stages", "2")
    r2, s2 = run_train(tmp_path, "b", "--method", "adl", "--stages", "2")
    assert s1["params_sha256"] == s2["params_sha256"]
    assert [r["train_loss"] for r in r1] == [r["train_loss"] for r in r2]
    _, s3 = run_train(tmp_path, "c", "--method", "adl", "--stages", "2", "--seed", "1")
    assert s3["params_sha256"] != s1["params_sha256"]


def test_schedule_json(capsys):
    assert main(["schedule", "--method", "fdg", "--stages", "3", "--batches", "8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["delay"] == [4, 2, 0]
    assert len(d["grid"]) == d["ticks"] == 8 + 4
    assert d["grid"][3] == [["F3"], ["B0", "U", "F2"], ["F1", "B1", "U"]]


def test_schedule_accumulate_and_order(capsys):
    assert main(["schedule", "--method", "adl", "--stages", "3", "--batches", "8", "--accumulate", "2",
                 "--order", "fb", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["accumulate"] == 2 and d["order"] == "fb"
    assert d["staleness"][0][4:6] == [2, 2]


def test_schedule_draws_a_grid(capsys):
    assert main(["schedule", "--method", "ddg", "--stages", "2", "--batches", "3"]) == 0
    out = capsys.readouterr().out
    assert "stage0  F0" in out and "delay d_k = [1, 0]" in out


@pytest.mark.parametrize("argv,msg", [
    (["train", "--method", "fgd"], "unknown method 'fgd' (valid: "),
    (["train", "--method", "bp", "--beta", "0.5"], "method 'bp' takes no option 'beta'"),
    (["train", "--method", "fdg", "--beta", "1.5"], "beta/gamma must be in (0, 1], got 1.5"),
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--stages", "0"], "--stages must be >= 1, got 0"),
    (["train", "--dataset", "digits", "--model", "mlp", "--stages", "40"], "40 stages"),
    (["train", "--partition", "3,x"], "bad --partition '3,x'"),
    (["train", "--replicas", "2"], "--replicas 2 needs --engine dist"),
    (["schedule", "--method", "adl", "--accumulate", "0"], "accumulate must be >= 1, got 0"),
])
def test_bad_input_gets_one_clear_line(argv, msg, capsys):
    assert main(argv + ["--no-progress"] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert msg in err, err
    assert "Traceback" not in err


def test_plot_runs(tmp_path):
    run_train(tmp_path, "a", "--method", "fdg", "--stages", "2")
    run_train(tmp_path, "b", "--method", "bp", "--stages", "2")
    png = tmp_path / "p.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_train_on_cifar_files_read_from_disk(tmp_path):
    from test_data import write_cifar_pickles
    write_cifar_pickles(tmp_path / "data", "cifar10")
    records, summary = run_train_args(tmp_path, ["--dataset", "cifar10", "--data-root", str(tmp_path / "data"),
                                                 "--model", "resnet20", "--stages", "2", "--epochs", "1",
                                                 "--batch-size", "4", "--method", "fdg", "--no-progress"])
    assert summary["model"] == "resnet20" and 0.0 <= summary["test_acc"] <= 1.0


def test_cifar_missing_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "cifar-10" in err.lower() and "Traceback" not in err


def run_train_args(tmp_path, argv):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *argv]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records, json.loads((out / "summary.json").read_text())
