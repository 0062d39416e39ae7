"""A user's own model on the real engine, from Python: a script with its own classes, optimizer,
per-step scheduler and DataLoader trains on engine="dist" to the weights engine="sim" gives, when run
as a script, piped to ``python -``, under torchrun, and as two torchrun launches (tests/scripts)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchdecoupled as td
from dist_cases import TORCHRUN, stage_processes, torchrun_two_nodes
from torchdecoupled.engines.dist import DistributedError

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "own_model.py")
ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def script_hashes():
    """python own_model.py both: every method's dist weights equal its sim weights (the script exits 1
    otherwise); returns the weights' hashes."""
    p = subprocess.run([sys.executable, SCRIPT, "both"], capture_output=True, text=True, timeout=240, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    return _last_json(p.stdout)


def test_a_scripts_own_classes_train_on_the_dist_engine_as_in_the_simulator(script_hashes):
    assert sorted(script_hashes) == ["dgl", "dtrp", "fdg"]


def test_code_piped_to_python_with_no_module_trains_the_same(script_hashes):
    with open(SCRIPT) as f:
        p = subprocess.run([sys.executable, "-", "both"], stdin=f, capture_output=True, text=True, timeout=240,
                           env=ENV, cwd="/")
    assert p.returncode == 0, p.stderr[-3000:]
    assert _last_json(p.stdout) == script_hashes


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_the_same_script_under_torchrun_gives_the_same_weights(script_hashes):
    p = subprocess.run([TORCHRUN, "--nproc-per-node", "2", SCRIPT, "dist"], capture_output=True, text=True,
                       timeout=240, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _last_json(p.stdout) == {"fdg": script_hashes["fdg"]}


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_two_torchrun_launches_give_the_same_weights(script_hashes):
    outs = torchrun_two_nodes([SCRIPT, "dist"])
    assert _last_json(outs[0]) == {"fdg": script_hashes["fdg"]}


# ---- in this process: boundaries, losses, evaluation, failures -------------------------------------------

class Split(nn.Module):
    """Returns (h, keep): a float tensor and an integer mask that crosses the boundary without a gradient."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return h, (x[:, 0] > 0).long()


class Masked(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.fc = nn.Linear(8, out)

    def forward(self, pair):
        h, keep = pair
        return {"h": torch.tanh(self.fc(h)) * keep.unsqueeze(1), "skip": h}


class Join(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.fc = nn.Linear(8, out)

    def forward(self, d):
        return self.fc(d["h"] + d["skip"])


class Tokens(nn.Module):
    """(B, T) integer tokens -> (B, T, V) logits, through an embedding."""

    def __init__(self, vocab=7):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)

    def forward(self, t):
        return self.emb(t)


def _data(kind: str):
    g = torch.Generator().manual_seed(0)
    if kind == "tokens":
        x = torch.randint(0, 7, (64, 5), generator=g)
        return TensorDataset(x, (x + 1) % 7)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = x[:, :2].sum(1, keepdim=True) if kind == "mse" else (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "tokens":
        return nn.Sequential(Tokens(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 7)).double()
    out = 1 if kind == "mse" else 2
    return nn.Sequential(Split(), Masked(8), Join(out)).double()


CRITERIA = {"mse": nn.MSELoss(), "tokens": lambda out, y: nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()),
            "classes": None}


def _train(kind: str, engine: str, method="fdg", K=3):
    model = _model(kind)
    pipe = td.Pipeline(model, method, K, engine=engine, criterion=CRITERIA[kind], boundaries=[1, 2] if K == 3 else None,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), timeout=30)
    loader = DataLoader(_data(kind), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    history = pipe.fit(loader, epochs=2, val_data=DataLoader(_data(kind), batch_size=20), progress=False)
    return model, pipe, history


@pytest.mark.parametrize("kind", ["classes", "mse", "tokens"])
def test_tuple_and_dict_boundaries_and_any_criterion_equal_the_simulator(kind):
    sim_model, _, sim_hist = _train(kind, "sim")
    dist_model, pipe, dist_hist = _train(kind, "dist")
    for a, b in zip(sim_model.state_dict().values(), dist_model.state_dict().values()):
        assert torch.equal(a, b)
    keys = ("train_loss", "test_loss") + (("train_acc", "test_acc") if kind != "mse" else ())
    assert [{k: r[k] for k in keys} for r in dist_hist] == [{k: r[k] for k in keys} for r in sim_hist]
    assert all(r["test_loss"] > 0 for r in dist_hist)
    if kind == "mse":  # accuracy does not apply to a regression: not reported, rather than 0
        assert "test_acc" not in dist_hist[-1] and "train_acc" not in dist_hist[-1]
    if kind == "tokens":
        assert 0 <= dist_hist[-1]["test_acc"] <= 1
    x, y = _data(kind).tensors
    ev = pipe.evaluate(x, y)
    want = CRITERIA[kind] or nn.functional.cross_entropy
    with torch.no_grad():
        assert ev["test_loss"] == pytest.approx(float(want(dist_model(x), y)), rel=1e-9)


def test_evaluate_uses_the_criterion_and_the_metrics():
    model, pipe, _ = _train("mse", "sim")
    x, y = _data("mse").tensors
    pipe.metrics = {"mae": lambda out, t: (out - t).abs().mean()}
    ev = pipe.evaluate(DataLoader(TensorDataset(x, y), batch_size=64))
    with torch.no_grad():
        assert ev["test_loss"] == pytest.approx(float(nn.functional.mse_loss(model(x), y)), rel=1e-9)
        assert ev["test_mae"] == pytest.approx(float((model(x) - y).abs().mean()), rel=1e-9)


def test_a_second_fit_continues_the_same_stages_on_either_engine():
    def run(engines):
        model = _model("classes")
        pipe = td.Pipeline(model, "fdg", 3, boundaries=[1, 2], timeout=30,
                           optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
        for e in engines:
            pipe.engine = e
            pipe.fit(DataLoader(_data("classes"), batch_size=16), epochs=1, progress=False)
        return model, pipe

    (a, pa), (b, pb) = run(["sim", "sim"]), run(["dist", "dist"])
    (c, _) = run(["dist", "sim"])
    for x, y, z in zip(a.state_dict().values(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert pa.stages[0].optimizer.state_dict()["state"][0]["step"] == pb.stages[0].optimizer.state_dict()["state"][0]["step"] == 8


class Failing:
    """Eight batches a pass; batch 7 raises."""

    def __len__(self):
        return 8

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for b in range(8):
            if b == 7:
                raise OSError("disk on fire")
            yield torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randint(0, 2, (4,), generator=g)


def test_a_loader_that_raises_stops_every_process_and_names_the_batch():
    pipe = td.Pipeline(_model("classes"), "fdg", 3, boundaries=[1, 2], engine="dist", timeout=30,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(DistributedError, match=r"reading batch 7 of the training data \(epoch 0, batch 7 of it\) "
                                               r"raised OSError: disk on fire"):
        pipe.fit(Failing(), epochs=2, progress=False)
    assert not stage_processes()


def test_what_cannot_be_sent_to_a_stage_process_is_named():
    import threading
    lock = threading.Lock()
    pipe = td.Pipeline(_model("classes"), "fdg", 3, boundaries=[1, 2], engine="dist",
                       criterion=lambda out, y: nn.functional.cross_entropy(out, y) if lock else None,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ValueError, match=r"cannot send the criterion to the stage processes .*lock"):
        pipe.fit(DataLoader(_data("classes"), batch_size=16), progress=False)


def test_the_sim_engine_refuses_to_run_under_a_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    pipe = td.Pipeline(_model("classes"), "fdg", 3, boundaries=[1, 2], optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ValueError, match="engine='sim' runs every stage in one process"):
        pipe.fit(DataLoader(_data("classes"), batch_size=16), progress=False)


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_under_torchrun_every_rank_cuts_where_rank_0_measured():
    code = ("import os, torch.distributed as dist; from torchdecoupled.engines.dist import agree_on_cuts; "
            "r = int(os.environ['RANK']); cuts = agree_on_cuts([r + 1, r + 3], None, 'cpu', None, 30); "
            "os.write(1, f'cuts {r} {cuts}\\n'.encode())")  # one write: the two ranks' lines never mix
    p = subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--no-python", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 0, p.stderr[-2000:]
    assert sorted(line for line in p.stdout.splitlines() if line.startswith("cuts")) == ["cuts 0 [1, 3]", "cuts 1 [1, 3]"]


def test_an_unseeded_shuffle_reads_the_same_batches_on_both_engines():
    def run(engine):
        model = _model("classes")
        pipe = td.Pipeline(model, "fdg", 3, boundaries=[1, 2], engine=engine, timeout=30,
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
        torch.manual_seed(5)  # the loader below draws its order from the global RNG
        pipe.fit(DataLoader(_data("classes"), batch_size=16, shuffle=True), epochs=2, progress=False)
        return list(model.state_dict().values())

    assert all(torch.equal(a, b) for a, b in zip(run("sim"), run("dist")))


def test_on_epoch_sees_each_record_while_the_run_goes_on():
    seen = []

    def on_epoch(rec):
        seen.append((rec["epoch"], len(stage_processes())))  # the stage processes still run

    pipe = td.Pipeline(_model("classes"), "fdg", 3, boundaries=[1, 2], engine="dist", timeout=30,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    history = pipe.fit(DataLoader(_data("classes"), batch_size=16), epochs=3, on_epoch=on_epoch, progress=False)
    assert [e for e, _ in seen] == [0, 1, 2] and [r["epoch"] for r in history] == [0, 1, 2]
    assert seen[0][1] == 3 and seen[1][1] == 3  # live: the run went on after epochs 0 and 1


def test_an_exception_in_on_epoch_stops_the_run():
    def on_epoch(rec):
        raise RuntimeError(f"stop at epoch {rec['epoch']}")

    pipe = td.Pipeline(_model("classes"), "fdg", 3, boundaries=[1, 2], engine="dist", timeout=30,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(RuntimeError, match="stop at epoch 0"):
        pipe.fit(DataLoader(_data("classes"), batch_size=16), epochs=50, on_epoch=on_epoch, progress=False)
    assert not stage_processes()


TWICE = """
import hashlib, os, sys, torch, torchdecoupled as td
from torch import nn
torch.manual_seed(0)
x = torch.randn(64, 6, dtype=torch.float64); y = (x[:, 0] > 0).long()
model = nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(4)], nn.Linear(6, 2)).double()
engine = sys.argv[1]
cut = dict(balance="time", sample=x[:8]) if engine == "dist" else dict(boundaries=[int(sys.argv[2])])
pipe = td.Pipeline(model, "fdg", 2, engine=engine, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), timeout=30, **cut)
for epochs in (2, 1):  # a second fit continues the stages, in the same process group
    pipe.fit([(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)], epochs=epochs, progress=False)
sha = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
if os.environ.get("RANK", "0") == "0":
    print("cuts", pipe.boundaries[0], sha)
"""


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_under_torchrun_a_measured_cut_and_a_second_fit_equal_the_simulator():
    p = subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--no-python", sys.executable, "-c", TWICE, "dist"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 0 and "terminate called" not in p.stderr, p.stderr[-2000:]
    cut, sha = [line.split()[1:] for line in p.stdout.splitlines() if line.startswith("cuts")][0]
    sim = subprocess.run([sys.executable, "-c", TWICE, "sim", cut], capture_output=True, text=True, timeout=120,
                         env=ENV)
    assert sim.returncode == 0, sim.stderr[-2000:]
    assert sim.stdout.split() == ["cuts", cut, sha]
