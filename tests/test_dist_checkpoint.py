"""Checkpoints of the distributed engine resume exactly: a dist run stopped after a checkpoint and continued
from it ends with the weights (and epoch records) of the uninterrupted run, which are the simulator's; the
file is the simulator's, so either engine resumes the other's; a checkpoint of another run is refused in
one line; a killed run leaves its last checkpoint whole."""
import dataclasses
import json
import os

import pytest
import torch

from checkpoint_cases import keep_each_checkpoint, stop_after_epoch
from dist_cases import TORCHRUN, sim, sim_summary, stage_processes, tiny_cfg, torchrun_two_nodes
from torchdecoupled import checkpoint
from torchdecoupled.data import load_dataset
from torchdecoupled.engines.dist import DistributedError
from torchdecoupled.metrics import params_sha256
from torchdecoupled.models import build_model
from torchdecoupled.run import train

FAULT = "TORCHDECOUPLED_FAULT"


@pytest.fixture(scope="module", autouse=True)
def cached_data():
    load_dataset("mnist1d")


def records(run_dir):
    """metrics.jsonl without what depends on the clock."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(r).items() if k not in ("time_s", "idle_fraction")} for r in lines]


def reference(cfg):
    return sim_summary(dataclasses.replace(cfg, checkpoint=False, resume=None))["params_sha256"]


def stopped_after(cfg, epoch, monkeypatch) -> str:
    """Run ``cfg`` (with a checkpoint) and stop it, as a crash would, right after the checkpoint of ``epoch``;
    returns its run directory."""
    per_epoch = -(-len(load_dataset(cfg.dataset).train_y) // cfg.batch_size)
    monkeypatch.setenv(FAULT, stop_after_epoch(cfg, epoch, per_epoch))
    with pytest.raises(DistributedError, match=r"stage 0 \(rank \d\) died"):
        train(cfg)
    monkeypatch.delenv(FAULT)
    assert len(checkpoint.read(checkpoint.in_dir(cfg.out))["records"]) == epoch + 1
    return cfg.out


# 3 epochs of 10 batches, stopped after the checkpoint of epoch 1: it holds 2 epochs and the batches in flight
CASES = {
    "fdg-K2": dict(method="fdg", stages=2),
    "ddg-K3-measured-partition": dict(method="ddg", stages=3, partition="time"),
    "dtrp-K3-recompute-predictor-batchnorm": dict(method="dtrp", stages=3, method_opts={"predictor": "momentum"},
                                                  model="cnn1d_bn", model_opts={}, batch_size=1000),
    "dgl-K3-local": dict(method="dgl", stages=3),
    "adl-K2-partial-window": dict(method="adl", stages=2, method_opts={"accumulate": 4}),
    "fdg-K2-D2": dict(method="fdg", stages=2, replicas=2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dist_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, name):
    cfg = tiny_cfg(epochs=3, out=str(tmp_path / "a"), checkpoint=True, **CASES[name])
    whole = train(cfg)
    assert checkpoint.read(str(tmp_path / "a" / checkpoint.FILE))["finished"]  # after every epoch, the last too
    cuts = ",".join(map(str, whole["boundaries"]))  # a measured partition: cut where the whole run was cut
    stop = stopped_after(dataclasses.replace(cfg, out=str(tmp_path / "s"), partition=cuts), 1, monkeypatch)
    resumed = train(dataclasses.replace(cfg, out=str(tmp_path / "b"), checkpoint=False, resume=stop))
    assert resumed["params_sha256"] == whole["params_sha256"]
    assert records(tmp_path / "b") == records(tmp_path / "a")  # the epochs before the resume, and after
    if cfg.replicas == 1:  # D = 2 equals the simulator up to rounding only (docs/distributed.md)
        assert whole["params_sha256"] == reference(dataclasses.replace(cfg, partition=cuts))
    state = checkpoint.read(str(tmp_path / "s" / checkpoint.FILE))
    assert state["tick"] > 0 and not state["finished"] and len(state["replicas"]) == cfg.replicas
    if name.startswith("adl"):  # stage 0 holds batch 18 of the window 16..19: a partial window is saved
        assert any(g is not None for g in state["replicas"][0]["stages"][0]["grads"])
    assert not stage_processes()


def test_either_engine_resumes_the_others_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_cfg("fdg", 3, epochs=3, checkpoint=True)
    after = keep_each_checkpoint(monkeypatch)
    in_dist_dir = stopped_after(dataclasses.replace(cfg, out=str(tmp_path / "dist")), 1, monkeypatch)
    sim(cfg, out=str(tmp_path / "sim"))
    in_sim_dir = after(tmp_path / "sim", 1)
    messages = [checkpoint.read(checkpoint.in_dir(d))["replicas"][0]["messages"].keys() for d in (in_dist_dir,
                                                                                                 in_sim_dir)]
    assert messages[0] == messages[1] and messages[0]
    in_sim = sim(cfg, out=str(tmp_path / "s"), checkpoint=False, resume=in_dist_dir)
    in_dist = train(dataclasses.replace(cfg, out=str(tmp_path / "d"), checkpoint=False, resume=in_sim_dir))
    assert in_sim["params_sha256"] == in_dist["params_sha256"] == reference(cfg)
    assert records(tmp_path / "s") == records(tmp_path / "d") == records(tmp_path / "sim")


def test_epochs_may_grow_without_a_cosine_schedule(tmp_path, monkeypatch):
    cfg = tiny_cfg("fdg", 2, epochs=3, lr_schedule="none", out=str(tmp_path / "a"), checkpoint=True)
    stopped_after(cfg, 1, monkeypatch)
    longer = dataclasses.replace(cfg, epochs=4, out=str(tmp_path / "b"), checkpoint=False, resume=cfg.out)
    assert train(longer)["params_sha256"] == reference(longer)  # = an uninterrupted 4-epoch run
    with pytest.raises(ValueError, match=r"written by a 3-epoch run and this run has --epochs 2, but by tick 20 "
                                         r"the pipeline had reached the last batch of a 2-epoch run: resume "
                                         r"with --epochs 3 or more$"):
        train(dataclasses.replace(longer, epochs=2, out=str(tmp_path / "b2")))  # b holds the 4-epoch run
    cosine = dataclasses.replace(cfg, lr_schedule="cosine", out=str(tmp_path / "c"))
    stopped_after(cosine, 1, monkeypatch)
    with pytest.raises(ValueError, match=r"the cosine learning-rate schedule anneals over the epochs of the run: "
                                         r"resume with --epochs 3$"):
        sim(cosine, epochs=4, out=None, checkpoint=False, resume=cosine.out)


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    cfg = tiny_cfg("fdg", 2, replicas=2, out=str(tmp_path / "a"), checkpoint=True)
    train(cfg)
    again = dataclasses.replace(cfg, out=None, checkpoint=False, resume=cfg.out)
    with pytest.raises(ValueError, match=r"was written by another run \(batch_size 400 there but 500 here, seed 0 "
                                         r"there but 1 here\): resume with the settings it was written with "
                                         r"\(--batch-size 400 --seed 0\), or start afresh without --resume"):
        train(dataclasses.replace(again, batch_size=500, seed=1))
    with pytest.raises(ValueError, match=r"method 'fdg' there but 'adl\(accumulate=2\)' here.*"
                                         r"\(--method fdg\)"):
        train(dataclasses.replace(again, method="adl", method_opts={"accumulate": 2}))
    with pytest.raises(ValueError, match=r"replicas 2 there but 1 here.*\(--engine dist --replicas 2\)"):
        sim(again)  # the simulator runs one replica
    with pytest.raises(ValueError, match=r"cut the model at \[2\] but this run cuts it at \[1\] \(--partition 1\): "
                                         r"resume with --partition 2$"):
        train(dataclasses.replace(again, partition="1"))  # found in the stage processes, same message
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        train(dataclasses.replace(again, resume=str(tmp_path / "nothing")))
    assert not stage_processes()


def test_a_killed_run_leaves_its_last_checkpoint_whole(tmp_path, monkeypatch):
    cfg = tiny_cfg("fdg", 2, epochs=3, out=str(tmp_path / "a"), checkpoint=True)
    monkeypatch.setenv(FAULT, "1:15:kill")  # after the checkpoint of tick 10 (epoch 0), before tick 20's
    with pytest.raises(DistributedError, match=r"stage 1 \(rank 1\) died at tick 15"):
        train(cfg)
    monkeypatch.delenv(FAULT)
    assert checkpoint.read(str(tmp_path / "a" / checkpoint.FILE))["tick"] == 10
    resumed = train(dataclasses.replace(cfg, out=str(tmp_path / "b"), checkpoint=False, resume=cfg.out))
    assert resumed["params_sha256"] == reference(cfg)
    assert [r["epoch"] for r in records(tmp_path / "b")] == [0, 1, 2]


def test_a_write_cut_short_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / checkpoint.FILE)
    checkpoint.write(path, checkpoint.make(3, [], {}, []))

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as a kill would stop it

    monkeypatch.setattr(checkpoint.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.write(path, checkpoint.make(7, [], {}, []))
    monkeypatch.undo()
    assert checkpoint.read(path)["tick"] == 3


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_torchrun_resumes_and_writes_checkpoints(tmp_path, monkeypatch):
    """Two torchrun "machines" (one process each) continue a checkpoint of the one-machine launcher, to
    more epochs, and write their own (the last one: the simulator resumes it to the same weights); rank 0
    writes the final weights."""
    cfg = tiny_cfg("fdg", 2, epochs=2, batch_size=500, dtype="float32", model_opts={}, lr_schedule="none",
                   out=str(tmp_path / "a"), checkpoint=True)  # what the command line below builds
    stopped_after(cfg, 0, monkeypatch)  # its checkpoint: after epoch 0
    torchrun_two_nodes(["-m", "torchdecoupled", "train", "--engine", "dist", "--method", "fdg", "--stages", "2",
                        "--dataset", "mnist1d", "--model", "mlp", "--epochs", "3", "--batch-size", "500",
                        "--lr", "0.1", "--lr-schedule", "none", "--timeout", "30", "--no-progress",
                        "--out", str(tmp_path / "b"), "--resume", cfg.out, "--checkpoint"])
    longer = dataclasses.replace(cfg, epochs=3)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["params_sha256"] == reference(longer)
    data = load_dataset("mnist1d")
    model = build_model("mlp", data.num_classes, data.in_shape)
    model.load_state_dict(torch.load(tmp_path / "b" / checkpoint.MODEL_FILE, weights_only=True))
    assert params_sha256([model]) == summary["params_sha256"]
    assert checkpoint.read(str(tmp_path / "b" / checkpoint.FILE))["tick"] > checkpoint.read(
        str(tmp_path / "a" / checkpoint.FILE))["tick"]
    again = sim(longer, out=str(tmp_path / "c"), checkpoint=False, resume=str(tmp_path / "b"))
    assert again["params_sha256"] == summary["params_sha256"]
