"""Checkpoints resume exactly: a run continued from its epoch checkpoint ends with the same weights."""
import json

import pytest

from torchdecoupled.cli import main

BASE = ["--dataset", "mnist1d", "--model", "cnn1d_bn", "--batch-size", "500", "--epochs", "3", "--no-progress"]


@pytest.mark.parametrize("method", [["fdg", "--stages", "3"], ["adl", "--stages", "3", "--accumulate", "3"],
                                    ["ddg", "--stages", "2"]])
def test_resume_is_bit_exact(tmp_path, method):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--method", *method, *BASE, "--out", str(a), "--checkpoint"]) == 0
    assert (a / "checkpoint.pt").exists()  # taken after epoch 1 (the last epoch needs none)
    assert main(["train", "--method", *method, *BASE, "--out", str(b), "--resume", str(a)]) == 0
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["params_sha256"] == sb["params_sha256"]
    ra, rb = ((d / "metrics.jsonl").read_text().splitlines() for d in (a, b))
    assert [json.loads(r)["test_acc"] for r in ra] == [json.loads(r)["test_acc"] for r in rb]
    assert [json.loads(r)["train_loss"] for r in ra] == [json.loads(r)["train_loss"] for r in rb]


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    assert main(["train", *BASE, "--resume", str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_checkpoint_needs_out(capsys):
    assert main(["train", *BASE, "--checkpoint"]) == 2
    assert "--checkpoint needs --out" in capsys.readouterr().err
