"""finite.py: a nan or inf stops the run at the stage where it appears, names stage, batch, tick and tensor,
leaves the last checkpoint finite (both engines); the JSON files stay strict; options are finite and in range."""
import dataclasses
import json
import math
import re

import pytest
import torch
from torch import nn

import torchdecoupled as td
from dist_cases import tiny_cfg
from torchdecoupled import checkpoint
from torchdecoupled.cli import main
from torchdecoupled.config import RunConfig
from torchdecoupled.engines.dist import DistributedError
from torchdecoupled.finite import SMALL, NonFiniteError, all_finite
from torchdecoupled.metrics import MetricsWriter, write_summary
from torchdecoupled.run import train

# fdg, K = 2, float32, lr 10: epoch 0 (batches 0-9) is finite, the loss of batch 15 is nan (tick 16), before
# epoch 1's record and checkpoint (tick 20)
DIVERGES = dict(epochs=3, lr=10.0, dtype="float32", lr_schedule="none", checkpoint=True)
LOSS_15 = re.escape("stage 1: after the forward of batch 15 (tick 16), the loss is nan: lower the learning rate")


class NanGrad(torch.autograd.Function):
    """Identity forward, nan gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, math.nan)


class PoisonGradient(nn.Module):
    def forward(self, x):
        return NanGrad.apply(x)


def fit(model, batches, last_lr=0.1, engine="sim", method="fdg", criterion=None):
    """``last_lr``: the learning rate of stage 1 (the one holding the 3 x 8 weight); stage 0's is 0.1."""
    def sgd(ps):
        ps = list(ps)
        return torch.optim.SGD(ps, lr=last_lr if any(p.shape == (3, 8) for p in ps) else 0.1)

    pipe = td.Pipeline(model, method, 2, boundaries=[2], engine=engine, timeout=30, num_classes=3 if method == "dgl"
                       else None, optimizer=sgd, criterion=criterion)
    return pipe.fit(batches, epochs=1, progress=False)


def raises(engine, message):
    """sim: NonFiniteError(message); dist: the failing stage's one line, naming its rank and tick, then it."""
    if engine == "sim":
        return pytest.raises(NonFiniteError, match="^" + message)
    tick = re.search(r"\\\(tick (\d+)\\\)", message).group(1)
    stage = message.split(":")[0].split()[1]
    return pytest.raises(DistributedError, match=f"^distributed run failed: stage {stage} \\(rank {stage}\\) failed at "
                                                 f"tick {tick}: NonFiniteError: {message}")


def data(n=4, poison=None, value=math.inf, label=None):
    """n batches of 8; batch ``poison`` has ``value`` in its first input and ``label`` (if given) in its first
    target."""
    g = torch.Generator().manual_seed(0)
    out = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]
    if poison is not None:
        out[poison][0][0, 0] = value
        out[poison][1][0] = label if label is not None else out[poison][1][0]
    return out


def infinite_at_label_3(out, y):
    return nn.functional.cross_entropy(out, y.clamp(max=2)) * (math.inf if y.max() > 2 else 1.0)


def mlp(*extra):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), *extra, nn.Linear(8, 3))


ENGINES = pytest.mark.parametrize("engine", ["sim", "dist"])


@ENGINES
def test_a_non_finite_loss_names_stage_batch_and_tick(engine):
    with raises(engine, r"stage 1: after the forward of batch 2 \(tick 3\), the loss is inf: lower the lear"):
        fit(mlp(), data(poison=2, value=0.0, label=3), engine=engine,
            criterion=infinite_at_label_3)


@ENGINES
@pytest.mark.parametrize("method", ["fdg", "dsp"])  # dsp: stage 0 recomputes, its F runs without a graph
def test_a_non_finite_activation_is_caught_at_its_sender(engine, method):
    with raises(engine, r"stage 0: after the forward of batch 2 \(tick 2\), the activation it sends up is (nan|inf)"):
        fit(mlp(), data(poison=2), engine=engine, method=method)


@ENGINES
def test_a_running_statistic_that_overflows_is_named(engine):
    with raises(engine, r"stage 0: after the forward of batch 2 \(tick 2\), buffer '1.running_var' is inf"):
        fit(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)), data(poison=2, value=1e30),
            engine=engine)


@ENGINES
def test_a_nan_loss_of_an_auxiliary_head_is_named(engine):
    with raises(engine, r"stage 0: after the forward of batch 2 \(tick 2\), the auxiliary head's loss is nan: "):
        fit(mlp(), data(poison=2), engine=engine, method="dgl")


@ENGINES
def test_a_nan_gradient_sent_down_is_caught_at_its_sender(engine):
    with raises(engine, r"stage 1: after the backward of batch 0 \(tick 1\), the gradient it sends down is nan"):
        fit(mlp(PoisonGradient()), data(), engine=engine)


@ENGINES
def test_a_parameter_made_infinite_by_the_update_is_named(engine):
    with raises(engine, r"stage 1: after the update of batch 0 \(tick 1\), parameter '\w+\.weight' is (nan|inf): "
                        r".* \(lr inf\)$"):
        fit(mlp(), data(), last_lr=math.inf, engine=engine)


NAN, INF = math.nan, math.inf
BIG = torch.linspace(-1, 1, SMALL)  # summed, not scanned
OVERFLOWS = torch.full((SMALL,), 3e38)  # finite elements whose sum is inf: aminmax decides


def _with(t, value, at=7):
    t = t.clone()
    t.view(-1)[at] = value
    return t


# tensors -> all finite? (small ones are scanned in one call per device and dtype, large ones summed)
ALL_FINITE = [
    ([torch.randn(3)], True),
    ([torch.tensor([1.0, NAN])], False),
    ([torch.tensor(-INF)], False),                                   # a 0-d loss
    ([BIG], True),
    ([OVERFLOWS], True),
    ([_with(OVERFLOWS, NAN)], False),
    ([BIG, _with(BIG, -INF)], False),
    ([BIG, torch.tensor([NAN])], False),                             # small bad, large good
    ([torch.randn(5), _with(BIG, INF)], False),                      # small good, large bad
    ([torch.randn(3).expand(4, 3)], True),                           # a view the kernel cannot write back
    ([torch.tensor([NAN]).expand(4)], False),
    ([torch.randint(0, 5, (4,))], True),                             # integers are skipped
    ([torch.tensor([complex(1, NAN)])], False),
    ([torch.randn(3, dtype=torch.complex64)], True),
    ([torch.randn(3, dtype=torch.bfloat16), torch.randn(3, dtype=torch.float64)], True),
    ([torch.randn(3, dtype=torch.bfloat16), torch.tensor([INF], dtype=torch.float64)], False),
    ([torch.randn(3).to(torch.float8_e4m3fn)], True),                # a dtype the kernel lacks
    ([torch.tensor([NAN]).to(torch.float8_e5m2)], False),
    ([None, torch.empty(0)], True),
    ([], True),
]


def _bits(t):
    return t.view(torch.uint8) if t.dtype.itemsize == 1 else t.view(torch.float64) if t.is_complex() else t


@pytest.mark.parametrize("i", range(len(ALL_FINITE)))
def test_all_finite_table(i):
    tensors, want = ALL_FINITE[i]
    before = [t.clone() for t in tensors if t is not None]
    assert all_finite(tensors) is want
    after = [t for t in tensors if t is not None]
    assert all(torch.equal(_bits(a), _bits(b)) or not want for a, b in zip(after, before))  # values unchanged


def test_the_scan_leaves_autograd_alone():
    """The checked loss, parameters and BatchNorm statistics keep their values and version counters: a
    backward after the check works."""
    bn, w = nn.BatchNorm1d(4), nn.Parameter(torch.randn(4))
    loss = (bn(torch.randn(8, 4)) * w).sum()
    tensors = [loss, w, bn.running_mean, bn.running_var]
    versions, values = [t._version for t in tensors], [t.detach().clone() for t in tensors]
    assert all_finite(tensors)
    assert [t._version for t in tensors] == versions
    assert all(torch.equal(t, v) for t, v in zip(tensors, values))
    loss.backward()
    assert w.grad is not None


def test_a_finite_run_is_unchanged_by_the_checks(monkeypatch):
    checked, unchecked = mlp(), mlp()
    fit(checked, data())
    calls = []
    monkeypatch.setattr("torchdecoupled.finite.all_finite", lambda ts: calls.append(1) or True)
    fit(unchecked, data())
    assert calls and all(torch.equal(a, b) for a, b in zip(checked.state_dict().values(),
                                                            unchecked.state_dict().values()))


def _last_good_checkpoint(out) -> None:
    state = checkpoint.read(checkpoint.in_dir(str(out)), map_location="cpu")
    assert [r["epoch"] for r in state["records"]] == [0] and state["tick"] == 10
    tensors = []
    checkpoint.map_tensors(lambda t: tensors.append(t), state)
    floats = [t for t in tensors if t.is_floating_point()]
    assert floats and all(torch.isfinite(t).all() for t in floats)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0]


def test_sim_divergence_stops_before_the_next_checkpoint(tmp_path):
    cfg = tiny_cfg(engine="sim", out=str(tmp_path), **DIVERGES)
    with pytest.raises(NonFiniteError, match=LOSS_15):
        train(cfg)
    _last_good_checkpoint(tmp_path)


def test_dist_divergence_names_stage_rank_tick_and_keeps_the_checkpoint(tmp_path):
    cfg = tiny_cfg(out=str(tmp_path), **DIVERGES)
    with pytest.raises(DistributedError, match=r"stage 1 \(rank 1\) failed at tick 16: NonFiniteError: " + LOSS_15):
        train(cfg)
    _last_good_checkpoint(tmp_path)


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    argv = ["train", "--dataset", "mnist1d", "--model", "mlp", "--stages", "2", "--epochs", "3", "--lr", "1000",
            "--batch-size", "400", "--lr-schedule", "none", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the config line, then the error
    assert err[0].startswith("config (saved as") and len(err) == 2
    assert re.match(r"torchdecoupled: error: stage \d: .* is (nan|inf): lower the lea", err[1])


def test_metrics_files_are_strict_json_with_null_for_nan_and_inf(tmp_path):
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    w = MetricsWriter(str(tmp_path), [{"epoch": 0, "train_loss": math.nan}])
    w.epoch({"epoch": 1, "train_loss": 0.5, "test_loss": math.inf, "lr": [-math.inf, 0.1]})
    w.close()
    records = [strict(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"epoch": 0, "train_loss": None},
                       {"epoch": 1, "train_loss": 0.5, "test_loss": None, "lr": [None, 0.1]}]
    write_summary(str(tmp_path), {"train_loss": math.nan, "config": {"lr": 0.1}})
    assert strict((tmp_path / "summary.json").read_text()) == {"train_loss": None, "config": {"lr": 0.1}}


@pytest.mark.parametrize("field,value,message", [
    ("lr", math.nan, "--lr must be a finite number > 0, got nan"),
    ("lr", math.inf, "--lr must be a finite number > 0, got inf"),
    ("lr", 0.0, "--lr must be a finite number > 0, got 0.0"),
    ("momentum", math.nan, r"--momentum must be in \[0, 1\), got nan"),
    ("momentum", 5.0, r"--momentum must be in \[0, 1\), got 5.0"),
    ("momentum", 1.0, r"--momentum must be in \[0, 1\), got 1.0"),
    ("momentum", -0.1, r"--momentum must be in \[0, 1\), got -0.1"),
    ("weight_decay", math.nan, "--weight-decay must be a finite number >= 0, got nan"),
    ("weight_decay", math.inf, "--weight-decay must be a finite number >= 0, got inf"),
    ("weight_decay", -1.0, "--weight-decay must be a finite number >= 0, got -1.0"),
    ("timeout", math.nan, "--timeout must be greater than 0 and at most 2e\\+06 seconds, got nan"),
    ("timeout", math.inf, "--timeout must be greater than 0 and at most 2e\\+06 seconds, got inf"),
    ("timeout", 0.0, "--timeout must be greater than 0 and at most 2e\\+06 seconds, got 0.0"),
    ("timeout", 1e20, "--timeout must be greater than 0 and at most 2e\\+06 seconds, got 1e\\+20"),
])
def test_options_must_be_finite_and_in_range(field, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        dataclasses.replace(RunConfig(), **{field: value}).resolved()


@pytest.mark.parametrize("beta", [math.nan, math.inf, 0.0, 1.5])
def test_beta_must_be_in_0_1(beta):
    with pytest.raises(ValueError, match=r"beta/gamma must be in \(0, 1\]"):
        RunConfig(method_opts={"beta": beta}).resolved()
