"""The command line and the run directory: metrics.jsonl, summary.json, determinism, clear errors."""
import argparse
import json
import re

import pytest
import torch

from torchdecoupled.cli import main, parser
from torchdecoupled.config import DATASET_DEFAULTS, RunConfig

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
    (["train", "--device", "gpu0"], "bad --device 'gpu0' (valid: cpu, cuda, cuda:N)"),
    (["train", "--tensorboard"], "--tensorboard needs --out DIR"),
    (["compare", "--methods", "bp,fgd"], "unknown method 'fgd'"),
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


def subcommand(name: str) -> argparse.ArgumentParser:
    return next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def help_of(cmd: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("cmd", ["train", "compare", "schedule"])
def test_every_option_says_its_default(cmd):
    for action in subcommand(cmd)._actions:
        if action.dest not in ("help", "json"):
            assert "default" in action.help, f"{cmd} {action.option_strings}: {action.help}"


def test_help_shows_defaults_and_the_dataset_defaults(capsys):
    out = help_of("train", capsys)
    for name, (model, epochs, bs, lr) in DATASET_DEFAULTS.items():
        assert re.search(rf"^  {name} +{model} +{epochs} +{bs} +{lr:g}$", out, re.M), name
    text = " ".join(out.split())
    for shown in ("number of stages K (default 3)", "(default fdg)", "(default: the", "(default 0.9;",
                  "(default 0.0005)", "cosine; text: warmup_cosine)", "(default float32)", "(default cpu;", "(default 60)",
                  "(default 1: the same command gives the same numbers)", "ADL (default 2), BP (default 1)"):
        assert shown in text, shown
    assert "cnn1d for mnist1d" not in text and "torch's" not in text  # both were wrong


def test_compare_and_schedule_offer_only_what_they_use(capsys):
    text = " ".join(help_of("compare", capsys).split())
    assert "--resume" not in text and "--methods METHODS" in text and "(default bp,fdg)" in text
    text = " ".join(help_of("schedule", capsys).split())
    assert "--order" in text and "--accumulate" in text and "(default 8)" in text and "--beta" not in text
    assert "Only the method's family, --order and --accumulate shape the grid" in text
    for argv in (["compare", "--resume", "x"], ["schedule", "--beta", "0.5"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line(capsys):
    assert main(["train", "--device", "cuda", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "--device cuda: torch.cuda.is_available() is False here" in err and "use --device cpu" in err


def test_cuda_index_is_checked_against_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert RunConfig(device="cuda:1").resolved().device == "cuda:1"
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\) \(valid: cuda, "
                                         r"cuda:0 to cuda:1\)"):
        RunConfig(device="cuda:2").resolved()
