"""What a run directory leaves to use: model.pt (the final weights, plain PyTorch) and ``torchdecoupled eval``,
which scores them again (``run.evaluate_run``)."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchdecoupled as td
from torchdecoupled.cli import main
from torchdecoupled.data import load_dataset
from torchdecoupled.metrics import params_sha256
from torchdecoupled.models import build_model
from torchdecoupled.run import evaluate_run

TINY = ["--dataset", "mnist1d", "--batch-size", "400", "--epochs", "2", "--no-progress"]


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("args", [
    ["--method", "fdg", "--stages", "3", "--model", "mlp"],
    ["--method", "dgl", "--stages", "3", "--model", "cnn1d_bn"],            # heads, BatchNorm
    ["--method", "dtrp", "--stages", "2", "--model", "cnn1d_bn", "--predictor", "momentum"],
    ["--method", "fdg", "--stages", "2", "--model", "cnn1d_bn", "--engine", "dist"],
], ids=["fdg", "dgl", "dtrp", "fdg-dist"])
def test_eval_gives_the_runs_final_test_loss_and_acc(tmp_path, capsys, args):
    run = tmp_path / "run"
    assert main(["train", *args, *TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    s = summary(run)
    assert (got["test_loss"], got["test_acc"]) == (s["test_loss"], s["test_acc"])
    assert got["run"] == str(run) and got["dataset"] == "mnist1d"
    assert main(["eval", str(run)]) == 0
    assert capsys.readouterr().out == f"{run} on mnist1d: test_loss {s['test_loss']:.4f} test_acc {s['test_acc']:.4f}\n"


def test_model_pt_is_the_final_model_and_needs_only_torch(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--method", "dgl", "--stages", "3", "--model", "mlp", *TINY, "--out", str(run)]) == 0
    data = load_dataset("mnist1d")
    model = build_model("mlp", data.num_classes, data.in_shape)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))  # every key, no auxiliary head's
    assert params_sha256([model]) == summary(run)["params_sha256"]
    plain = ("import sys, torch; w = torch.load(sys.argv[1], weights_only=True); "
             "assert type(w) is dict and all(t.device.type == 'cpu' for t in w.values()); "
             "assert not any(m.startswith('torchdecoupled') for m in sys.modules); print(len(w))")
    p = subprocess.run([sys.executable, "-c", plain, str(run / "model.pt")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and int(p.stdout) == len(model.state_dict()), p.stderr


@pytest.mark.parametrize("engine", ["sim", "dist"])
def test_a_users_own_model_gets_its_weights_in_out(tmp_path, engine):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).double()
    pipe = td.Pipeline(model, "dgl", 2, engine=engine, num_classes=2, timeout=30, sample=x[:2],
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    pipe.fit(DataLoader(data, batch_size=16), epochs=2, progress=False, out=str(tmp_path))
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert list(weights) == list(model.state_dict())  # the model's keys: the stage heads are not in it
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_eval_on_another_copy_of_the_dataset(tmp_path, capsys):
    from test_data import write_cifar_pickles
    write_cifar_pickles(tmp_path / "a", "cifar10")
    write_cifar_pickles(tmp_path / "b", "cifar10", per_file=6)  # other images, other labels
    run = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path / "a"), "--model", "resnet20",
                 "--stages", "2", "--epochs", "1", "--batch-size", "4", "--no-progress", "--out", str(run)]) == 0
    got = evaluate_run(str(run), data_root=str(tmp_path / "b"))
    test = load_dataset("cifar10", root=str(tmp_path / "b"))
    model = build_model("resnet20", 10, test.in_shape).eval()
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    with torch.no_grad():
        out = model(test.test_x)
    assert got["test_loss"] == pytest.approx(float(nn.functional.cross_entropy(out, test.test_y)), rel=1e-6)
    assert got["test_acc"] == int((out.argmax(1) == test.test_y).sum()) / len(test.test_y)
    write_cifar_pickles(tmp_path / "c", "cifar100")
    assert main(["eval", str(run), "--dataset", "cifar100", "--data-root", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert f"the weights in {str(run)!r} (a resnet20) do not fit the model built for dataset 'cifar100'" in err
    assert "Traceback" not in err


def test_eval_of_what_is_not_a_run_directory_is_one_line(tmp_path, capsys):
    def error(path):
        assert main(["eval", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    assert f"no directory {str(tmp_path / 'nothing')!r}: expected a run directory" in error(tmp_path / "nothing")
    assert f"no summary.json in {str(tmp_path)!r}" in error(tmp_path)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    torch.manual_seed(0)
    td.Pipeline(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), "fdg", 2,
                optimizer=lambda p: torch.optim.SGD(p, lr=0.1)).fit(TensorDataset(x, y), batch_size=8,
                                                                      progress=False, out=str(tmp_path / "api"))
    assert "names no zoo model and dataset (a Python API run?" in error(tmp_path / "api")
    (tmp_path / "api" / "model.pt").unlink()
    assert "no model.pt in" in error(tmp_path / "api")
