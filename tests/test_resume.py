"""A finished run (its checkpoint taken after the last epoch) resumes to nothing more, or is extended by more
epochs (``resume.py``) on either engine: the same stages go on, the records continue, the data is the
later epochs'; a drained pipeline restarts, so only BP ends as the longer run would have."""
import dataclasses
import json

import pytest

from checkpoint_cases import keep_each_checkpoint
from dist_cases import sim, sim_summary, stage_processes, tiny_cfg
from torchdecoupled import checkpoint, resume
from torchdecoupled.data import load_dataset
from torchdecoupled.methods import get_method
from torchdecoupled.run import train


@pytest.fixture(scope="module", autouse=True)
def cached_data():
    load_dataset("mnist1d")


def run(cfg, engine, **kw):
    return train(dataclasses.replace(cfg, **kw)) if engine == "dist" else sim(cfg, **kw)


def records(run_dir):
    """metrics.jsonl without what depends on the clock."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(r).items() if k not in ("time_s", "idle_fraction")} for r in lines]


@pytest.mark.parametrize("engine", ["sim", "dist"])
def test_bp_extended_is_the_longer_run(tmp_path, engine):
    """BP has no batch in flight at an epoch's end: draining changes nothing, so 2 epochs extended to 4 are
    the 4-epoch run, weights and records, only if every epoch reads its own shuffle and the LR steps go on."""
    cfg = tiny_cfg("bp", 2, epochs=2, lr_schedule="step", milestones=(3,), checkpoint=True, out=str(tmp_path / "a"))
    run(cfg, engine)
    longer = dataclasses.replace(cfg, epochs=4, checkpoint=False)
    extended = run(longer, engine, out=str(tmp_path / "b"), resume=cfg.out)
    whole = sim(longer, out=str(tmp_path / "whole"))
    assert extended["params_sha256"] == whole["params_sha256"]
    assert records(tmp_path / "b") == records(tmp_path / "whole")
    assert records(tmp_path / "b")[-1]["lr"] == pytest.approx([0.1 * 0.1] * 2)  # the milestone after the old end


def test_an_extended_run_goes_on_from_the_finished_one_in_either_engine(tmp_path):
    cfg = tiny_cfg("fdg", 2, epochs=2, lr_schedule="step", milestones=(3,), checkpoint=True, out=str(tmp_path / "a"))
    first = train(cfg)
    state = checkpoint.read(checkpoint.in_dir(cfg.out))
    assert (state["finished"], state["epochs"], state["first_epoch"]) == (True, 2, 0)
    longer = dataclasses.replace(cfg, epochs=4, resume=cfg.out)
    in_dist = train(dataclasses.replace(longer, out=str(tmp_path / "d")))
    in_sim = sim(longer, out=str(tmp_path / "s"))
    assert in_dist["params_sha256"] == in_sim["params_sha256"] != first["params_sha256"]
    assert records(tmp_path / "d") == records(tmp_path / "s")
    assert records(tmp_path / "d")[:2] == records(tmp_path / "a")
    assert [r["epoch"] for r in records(tmp_path / "d")] == [0, 1, 2, 3]
    # drained after epoch 1, refilled: not the uninterrupted 4-epoch run (docs/distributed.md)
    whole = sim_summary(dataclasses.replace(longer, resume=None, checkpoint=False))
    assert in_dist["params_sha256"] != whole["params_sha256"]
    state = checkpoint.read(checkpoint.in_dir(str(tmp_path / "d")))
    assert (state["finished"], state["epochs"], state["first_epoch"]) == (True, 4, 2)
    again = dataclasses.replace(longer, checkpoint=False, resume=str(tmp_path / "d"))
    assert train(dataclasses.replace(again, out=str(tmp_path / "noop")))["params_sha256"] == in_dist["params_sha256"]
    assert records(tmp_path / "noop") == records(tmp_path / "d")
    five = train(dataclasses.replace(again, epochs=5, out=str(tmp_path / "five")))
    assert five["epochs"] == 5 and [r["epoch"] for r in records(tmp_path / "five")] == [0, 1, 2, 3, 4]
    assert not stage_processes()


def test_a_stopped_extension_resumes_inside_it(tmp_path, monkeypatch):
    after = keep_each_checkpoint(monkeypatch)
    cfg = tiny_cfg("fdg", 3, epochs=2, lr_schedule="none", checkpoint=True, out=str(tmp_path / "a"))
    sim(cfg)
    longer = dataclasses.replace(cfg, epochs=4, resume=cfg.out)
    extended = sim(longer, out=str(tmp_path / "ext"))
    stopped = after(tmp_path / "ext", 2)  # the extension's first epoch done, its pipeline full
    assert not checkpoint.read(checkpoint.in_dir(stopped))["finished"]
    resumed = sim(longer, out=str(tmp_path / "b"), checkpoint=False, resume=stopped)
    assert resumed["params_sha256"] == extended["params_sha256"]
    assert records(tmp_path / "b") == records(tmp_path / "ext")
    to_five = sim(longer, epochs=5, out=str(tmp_path / "c"), checkpoint=False, resume=stopped)
    assert to_five["params_sha256"] == sim(longer, epochs=5, out=None, checkpoint=False)["params_sha256"]
    with pytest.raises(ValueError, match=r"written by a 4-epoch run and this run has --epochs 3, but by tick 11 "
                                         r"the pipeline had reached the last batch of a 3-epoch run: resume with "
                                         r"--epochs 4 or more$"):
        sim(longer, epochs=3, out=None, checkpoint=False, resume=stopped)


def test_what_cannot_extend_a_finished_run_says_so(tmp_path):
    cosine = tiny_cfg("fdg", 2, epochs=2, checkpoint=True, out=str(tmp_path / "a"))
    sim(cosine)
    path = checkpoint.in_dir(cosine.out)
    with pytest.raises(ValueError, match=rf"^checkpoint '{path}' holds a finished 2-epoch run whose cosine learning-"
                                         r"rate schedule annealed over those 2 epochs, so it cannot be extended to "
                                         r"--epochs 3: train afresh with --epochs 3 \(with --lr-schedule step or "
                                         r"none, a finished run can be extended later\)$"):
        sim(cosine, epochs=3, out=None, checkpoint=False, resume=cosine.out)
    with pytest.raises(ValueError, match=rf"^checkpoint '{path}' holds a finished 2-epoch run and this run has "
                                         r"--epochs 1: resume with --epochs 2 \(nothing more to run\) or more \(to "
                                         r"extend it\)$"):
        sim(cosine, epochs=1, out=None, checkpoint=False, resume=cosine.out)
    state = checkpoint.read(path)
    with pytest.raises(ValueError, match=r"finished 2-epoch run: resume it with epochs=2 \(nothing more to run\) "
                                         r"or more \(to extend it\), not 1$"):
        resume.start(state, 1)  # Pipeline.fit(resume=...): no configuration to compare
    adl = get_method("adl", warmup_epochs=1)
    with pytest.raises(ValueError, match=r"of adl\(.*warmup_epochs=1.*\), whose learning-rate warm-up counts the "
                                         r"batches of a schedule and would start again in the epochs added: it "
                                         r"cannot be extended to 3 epochs; train afresh with that many$"):
        resume.start(state, 3, adl)
    assert resume.start(state, 2) == resume.Start(0, state["tick"] + 1)  # nothing left to run
    assert resume.start(state, 3, get_method("fdg")) == resume.Start(2, 0)
