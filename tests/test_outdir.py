"""The run directory (outdir.py, metrics.py): a rerun into a run's --out is refused unless it resumes that run
or --force replaces it; the files are written whole; a run that fails before its first epoch leaves none."""
import json
import os

import pytest

from dist_cases import tiny_cfg
from torchdecoupled.cli import main
from torchdecoupled.engines.dist_launch import DistributedError
from torchdecoupled.metrics import write_atomic
from torchdecoupled.run import train

TINY = ["--dataset", "digits", "--model", "mlp", "--epochs", "2", "--batch-size", "64", "--no-progress",
        "--method", "fdg", "--stages", "2"]


def snapshot(out) -> dict:
    return {n: (out / n).read_bytes() for n in sorted(os.listdir(out)) if (out / n).is_file()}


def test_a_rerun_into_a_runs_directory_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["train", "--out", str(out), *TINY, "--checkpoint"]) == 0
    before = snapshot(out)
    assert {"metrics.jsonl", "metrics.csv", "summary.json", "checkpoint.pt", "model.pt"} <= set(before)
    capsys.readouterr()
    assert main(["train", "--out", str(out), *TINY, "--lr", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"torchdecoupled: error: --out '{out}' already holds a run (checkpoint.pt, metrics.csv, "
                   f"metrics.jsonl, model.pt, ...): choose a new --out, continue that run with --resume {out}, "
                   f"or replace it with --force"), err
    assert snapshot(out) == before  # config.toml too: refused before it is written


def test_force_replaces_the_earlier_run_whole(tmp_path):
    out = tmp_path / "a"
    (tmp_path / "a").mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds a run \\(notes.txt\\)"):
        train(tiny_cfg(engine="sim", out=str(out)))  # the Python face of a CLI run is checked too
    assert main(["train", "--out", str(out), *TINY, "--checkpoint", "--force"]) == 0
    first = json.loads((out / "summary.json").read_text())
    assert main(["train", "--out", str(out), *TINY, "--epochs", "1", "--force"]) == 0
    files = set(os.listdir(out))
    assert "checkpoint.pt" not in files and "notes.txt" in files  # the old run's outputs only are gone
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1 != first["epochs"]
    assert not [n for n in files if n.endswith(".tmp")]


def test_resuming_into_the_run_itself_is_allowed(tmp_path):
    out = tmp_path / "a"
    step = ["--checkpoint", "--lr-schedule", "none"]
    assert main(["train", "--out", str(out), *TINY, *step, "--epochs", "1"]) == 0
    assert main(["train", "--out", str(out), *TINY, *step, "--resume", str(out)]) == 0
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_a_run_that_fails_before_its_first_epoch_leaves_no_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHDECOUPLED_FAULT", "1:1:raise")
    out = tmp_path / "a"
    with pytest.raises(DistributedError):
        train(tiny_cfg(out=str(out)))
    assert os.listdir(out) == [] or set(os.listdir(out)) <= {"config.toml"}, os.listdir(out)


def test_write_atomic_leaves_the_old_file_or_the_new_one_and_no_tmp(tmp_path):
    path = tmp_path / "summary.json"
    write_atomic(str(path), "old")
    with pytest.raises(TypeError):
        write_atomic(str(path), b"not text")  # fails while writing
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]
    write_atomic(str(path), "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["summary.json"]


def test_an_out_that_is_a_file_is_refused(tmp_path):
    from torchdecoupled.config import RunConfig
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"is a file, not a directory: choose a directory for the run"):
        train(RunConfig(dataset="digits", out=str(f)))
