"""Checkpoints resume exactly: a run continued from its epoch checkpoint ends with the same weights."""
import dataclasses
import json

import pytest
import torch
from torch import nn

from checkpoint_cases import keep_each_checkpoint
from conftest import tiny_data
from torchdecoupled import checkpoint
from torchdecoupled.cli import main
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.heads import make_head
from torchdecoupled.methods import get_method
from torchdecoupled.metrics import params_sha256
from torchdecoupled.predict import make_predictor
from torchdecoupled.schedule import Schedule
from torchdecoupled.stage import Stage
from torchdecoupled.transport import LocalTransport

BASE = ["--dataset", "mnist1d", "--model", "cnn1d_bn", "--batch-size", "500", "--no-progress"]


@pytest.mark.parametrize("method", [
    ["fdg", "--stages", "3"], ["adl", "--stages", "3", "--accumulate", "3"], ["ddg", "--stages", "2"],
    ["fr", "--stages", "3"], ["dsp", "--stages", "3"],                                     # recompute
    ["dtrp", "--stages", "3", "--predictor", "momentum"], ["dtrp", "--stages", "3", "--predictor", "delta"],
    ["dgl", "--stages", "3"], ["infopro", "--stages", "3"],                                # auxiliary heads
], ids=lambda m: "-".join(a for a in m if not a.startswith("-") and not a.isdigit()))
def test_resume_is_bit_exact(tmp_path, monkeypatch, method):
    epochs = ["--epochs", "3" if method[0] in ("fdg", "adl", "ddg") else "2"]  # resumed after epoch 1 or 0
    a, b = tmp_path / "a", tmp_path / "b"
    after = keep_each_checkpoint(monkeypatch)
    assert main(["train", "--method", *method, *BASE, *epochs, "--out", str(a), "--checkpoint"]) == 0
    assert checkpoint.read(str(a / "checkpoint.pt"))["finished"]  # taken after every epoch, the last too
    stopped = after(a, int(epochs[1]) - 2)  # the run stopped after the epoch before the last
    assert main(["train", "--method", *method, *BASE, *epochs, "--out", str(b), "--resume", stopped]) == 0
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["params_sha256"] == sb["params_sha256"]
    ra, rb = ((d / "metrics.jsonl").read_text().splitlines() for d in (a, b))
    assert [json.loads(r)["test_acc"] for r in ra] == [json.loads(r)["test_acc"] for r in rb]
    assert [json.loads(r)["train_loss"] for r in ra] == [json.loads(r)["train_loss"] for r in rb]


# ---- resume after any tick, in the simulator: dropout, BatchNorm, predictors, heads -------------------

def tiny_stages(method, K=3):
    """A float64 net with dropout and BatchNorm cut in 3; heads and predictors where the method has them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 8), nn.BatchNorm1d(8),
                          nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3)).double()
    edges = [0, 3, 6, 8]
    schedule = Schedule(method.family, K, 12, method.order, method.accumulate)
    stages = []
    for k in range(K):
        module = model[edges[k]:edges[k + 1]]
        head = None
        if method.family == "local" and k < K - 1:
            head = make_head(method.head, (8,), 3, (6,), stage=k, num_stages=K, seed=10 + k).double()
        params = list(module.parameters()) + (list(head.parameters()) if head is not None else [])
        predictor = make_predictor(method.predictor) if method.predictor != "none" else None
        stages.append(Stage(k, schedule, method, module, torch.optim.SGD(params, lr=0.1, momentum=0.9),
                            head=head, predictor=predictor, seed=3, batches_per_epoch=6))
    return stages, schedule


def digest(stages):
    return params_sha256([nn.ModuleList([s.module] + ([s.head] if s.head is not None else [])) for s in stages])


METHODS = {
    "fr": get_method("fr"), "dsp": get_method("dsp"), "dsp-fb": get_method("dsp", order="fb"),
    "dtrp-momentum": get_method("dtrp", predictor="momentum"), "dtrp-delta": get_method("dtrp", predictor="delta"),
    # order "fb" forwards before the first update after a resume, so the predictor's own state is used
    # (under "bf" an update always refreshes it first): dtrp does not take the option, the test forces it
    "dtrp-momentum-fb": dataclasses.replace(get_method("dtrp", predictor="momentum"), order="fb"),
    "dtrp-delta-fb": dataclasses.replace(get_method("dtrp", predictor="delta"), order="fb"),
    "dgl": get_method("dgl"), "infopro": get_method("infopro"), "fdg": get_method("fdg"),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_after_any_tick_is_bit_exact(tmp_path, name):
    method, data, path = METHODS[name], tiny_data(), str(tmp_path / "checkpoint.pt")
    stages, schedule = tiny_stages(method)
    run_sim(stages, schedule, data)
    want = digest(stages)
    wrong = []
    for t in range(schedule.num_ticks - 1):
        stages, schedule = tiny_stages(method)
        transport = LocalTransport()
        run_sim(stages, schedule, data, transport=transport, ticks=range(t + 1))
        checkpoint.save(path, stages, transport, t, [], {})
        stages, schedule = tiny_stages(method)  # a fresh process: new weights, optimizers, predictors
        transport = LocalTransport()
        last, _ = checkpoint.load(path, stages, transport)
        run_sim(stages, schedule, data, transport=transport, ticks=range(last + 1, schedule.num_ticks))
        if digest(stages) != want:
            wrong.append(t)
    assert wrong == [], f"{name}: resuming after these ticks changes the weights"


def test_the_last_epochs_checkpoint_resumes_to_nothing_more(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["train", "--method", "fdg", "--stages", "3", *BASE, "--epochs", "2"]
    assert main([*args, "--out", str(a), "--checkpoint"]) == 0
    state = checkpoint.read(str(a / "checkpoint.pt"))
    assert state["finished"] and [r["epoch"] for r in state["records"]] == [0, 1]
    assert all(not st["inflight"] for st in state["replicas"][0]["stages"]) and not state["replicas"][0]["messages"]
    assert main([*args, "--out", str(b), "--resume", str(a)]) == 0
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["params_sha256"] == sb["params_sha256"] and sa["test_acc"] == sb["test_acc"]
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()  # the clock too: nothing ran
    assert (a / "model.pt").read_bytes() == (b / "model.pt").read_bytes()


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    assert main(["train", *BASE, "--resume", str(tmp_path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_checkpoint_needs_out(capsys):
    assert main(["train", *BASE, "--checkpoint"]) == 2
    assert "--checkpoint needs --out" in capsys.readouterr().err


def test_loss_records_of_an_older_checkpoint_still_count_their_targets():
    from torchdecoupled.checkpoint import restore_stage, stage_state
    from conftest import make_stages, tiny_data, tiny_model
    data = tiny_data()
    stages, _ = make_stages("bp", 1, tiny_model(), data, 4)
    st = stage_state(stages[0])
    st["losses"] = [(0, torch.tensor(2.0, dtype=torch.float64), torch.tensor(3), 8)]  # (b, loss, correct, n)
    restore_stage(stages[0], st)
    got = stages[0].collect(0)
    assert (got["correct"], got["targets"], got["samples"], got["loss_sum"]) == (3, 8, 8, 16.0)
