"""PETRA (Rivaud et al., ICLR 2025): reversible blocks invert exactly, a reversible stage keeps no input and
rebuilds it with its current weights (checked against plain PyTorch), PETRA without reversible stages is
DSP bit for bit, staleness and stored bytes match the schedule, the distributed engine equals the
simulator, and the CLI picks the dataset's reversible model."""
import copy
import warnings

import pytest
import torch
from torch import nn

import torchdecoupled as td
from conftest import assert_same_params, tiny_data, tiny_model, train_sim
from torchdecoupled.config import RunConfig
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.methods import get_method
from torchdecoupled.models import build_model
from torchdecoupled.reversible import Coupling, Reversible, invert, is_reversible, reversible_stages
from torchdecoupled.schedule import Schedule
from torchdecoupled.stage import Stage

F64 = torch.float64


def half(n, bn=False):
    layers = [nn.Linear(n, n), nn.Tanh()] + ([nn.BatchNorm1d(n)] if bn else [])
    return nn.Sequential(*layers)


def rev_mlp(seed=0, bn=True):
    """6 features in, 3 classes: [rev, rev] [Linear] [rev, rev] [Linear]; the second coupling has BatchNorm."""
    torch.manual_seed(seed)
    return nn.Sequential(Coupling(half(3), half(3)), Coupling(half(3, bn), half(3)), nn.Linear(6, 8),
                         Coupling(half(4), half(4)), Coupling(half(4), half(4, bn)), nn.Linear(8, 3)).to(F64)


def cut(model, cuts):
    edges = [0, *cuts, len(model)]
    return [model[a:b] for a, b in zip(edges, edges[1:])]


def stages_of(model, cuts, N, lr=0.1, momentum=0.9, name="petra", **opts):
    method = get_method(name, **opts)
    schedule = Schedule(method.family, len(cuts) + 1, N, method.order, method.accumulate)
    return [Stage(k, schedule, method, m, torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum),
                  batches_per_epoch=6) for k, m in enumerate(cut(model, cuts))], schedule


# ---- reversible blocks ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,shape,opts", [("revnet1d", (1, 40), {}), ("revnet_mini", (1, 8, 8), {}),
                                             ("revnet", (3, 16, 16), {"width": 4})])
def test_every_reversible_block_inverts_to_float64_precision(name, shape, opts):
    torch.manual_seed(0)
    model = build_model(name, 10, shape, **opts).to(F64)
    h, n = torch.randn(8, *shape, dtype=F64), 0
    for block in model:
        out = block(h)
        if is_reversible(block):
            torch.testing.assert_close(invert(block, out), h, rtol=0, atol=1e-12)
            n += 1
        h = out
    assert n >= 3 and not is_reversible(model[0]) and not is_reversible(model[-1])


def test_a_sequential_of_couplings_inverts_last_to_first_and_user_blocks_count():
    class Scale(Reversible):  # a user's own reversible block
        def forward(self, x):
            return 2 * x

        def inverse(self, y):
            return y / 2

    model = rev_mlp()
    stage = nn.Sequential(model[0], Scale(), model[1])
    x = torch.randn(5, 6, dtype=F64)
    torch.testing.assert_close(invert(stage, stage(x)), x, rtol=0, atol=1e-12)
    assert is_reversible(stage) and is_reversible(Scale())
    assert not is_reversible(nn.Sequential()) and not is_reversible(nn.Sequential(model[0], nn.ReLU()))
    assert reversible_stages(cut(model, [2, 3, 5])) == [0, 2]


def test_a_coupling_needs_two_equal_streams():
    with pytest.raises(ValueError, match="size 5: give the block an even number of channels"):
        Coupling(nn.Identity(), nn.Identity())(torch.randn(2, 5))


# ---- one backward against plain PyTorch ---------------------------------------------------------------
def test_a_reversible_stage_stores_nothing_and_rebuilds_its_input_with_the_current_weights():
    """Stage 1 of 3 (reversible, delayed): F of batch 0, then its weights change (as updates would), then
    B of batch 0. Oracle: x~ = F^{-1}(y) with the new weights, dx, dtheta of F(x~) with the new weights."""
    torch.manual_seed(1)
    module = nn.Sequential(Coupling(half(3), half(3, bn=True)), Coupling(half(3), half(3))).to(F64)
    method = get_method("petra")
    stage = Stage(1, Schedule("decoupled", 3, 4, method.order), method, module,
                  torch.optim.SGD(module.parameters(), lr=0.1))
    x = torch.randn(8, 6, dtype=F64)
    y = stage.forward(0, x)
    assert stage.reversible and stage.inflight[0].x is None and stage.stored_bytes == 0
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    buffers = {n: t.clone() for n, t in module.state_dict().items()}
    oracle = copy.deepcopy(module)
    grad = torch.randn(8, 6, dtype=F64)
    sent_x, sent_grad = stage.backward(0, (y, grad))
    for n, t in module.state_dict().items():
        assert torch.equal(t, buffers[n]), n  # the rebuild and the recompute leave BatchNorm's statistics alone
    with torch.no_grad():
        want_x = invert(oracle, y)
    leaf = want_x.clone().requires_grad_(True)
    out = oracle(leaf)
    gx, *gp = torch.autograd.grad(out, [leaf, *oracle.parameters()], grad)
    torch.testing.assert_close(sent_x, want_x, rtol=0, atol=1e-13)
    torch.testing.assert_close(sent_grad, gx, rtol=0, atol=1e-13)
    for p, g in zip(module.parameters(), gp):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-13)
    assert (sent_x - x).abs().max() > 1e-4  # the weights moved: the rebuilt input is approximate


# ---- against DSP -----------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["fb", "bf"])
@pytest.mark.parametrize("K", [2, 3, 4])
def test_without_reversible_stages_petra_is_dsp_bit_for_bit(K, order):
    petra, stages = train_sim("petra", K, num_batches=14, order=order)
    dsp, _ = train_sim("dsp", K, num_batches=14, order=order)
    assert_same_params(petra, dsp)
    assert not any(s.reversible for s in stages)


def test_with_weights_fixed_the_rebuild_is_exact_so_petra_applies_dsps_gradients():
    grads = {}
    for name in ("petra", "dsp"):
        model = rev_mlp()
        stages, schedule = stages_of(model, [2, 3, 5], 12, lr=0.0, name=name, order="fb")
        applied = grads[name] = []
        for s in stages:
            s.update = (lambda s=s, step=s.update: (applied.append([p.grad.clone() for p in s.params]), step()))
        run_sim(stages, schedule, tiny_data())
        if name == "petra":
            assert [s.reversible for s in stages] == [True, False, True, False]
    assert len(grads["petra"]) == len(grads["dsp"]) == 4 * 12
    for a, b in zip(grads["petra"], grads["dsp"]):
        for ga, gb in zip(a, b):
            torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


def test_with_training_the_rebuilt_inputs_are_close_but_not_the_stored_ones():
    models = {}
    for name in ("petra", "dsp"):
        models[name] = rev_mlp()
        stages, schedule = stages_of(models[name], [2, 3, 5], 24, lr=0.05, momentum=0.0, name=name, order="fb")
        run_sim(stages, schedule, tiny_data())
    diffs = [(a - b).abs().max().item() for a, b in zip(models["petra"].parameters(), models["dsp"].parameters())]
    assert 0 < max(diffs) < 1e-2


# ---- what the schedule says --------------------------------------------------------------------------
def max_in_flight(schedule, k):
    """Most batches forwarded and not yet backwarded at stage k, walking the grid action by action."""
    live, peak = 0, 0
    for t in range(schedule.num_ticks):
        for a in schedule.actions(t, k):
            live += {"F": 1, "B": -1, "U": 0}[a.op]
            peak = max(peak, live)
    return peak


@pytest.mark.parametrize("order", ["fb", "bf"])
def test_staleness_and_stored_bytes_read_from_the_schedule(order):
    model = rev_mlp()
    stages, schedule = stages_of(model, [2, 3, 5], 18, order=order)
    batches = tiny_data()
    run_sim(stages, schedule, batches)
    for s in stages[:-1]:
        assert s.telemetry.staleness == [(b, schedule.staleness(s.index, b)) for b in range(18)]
        steady = [tau for b, tau in s.telemetry.staleness if 6 <= b < 12]
        assert set(steady) == {schedule.delay(s.index) - (order == "bf")}
    assert stages[0].telemetry.peak_bytes == 0 and stages[2].telemetry.peak_bytes == 0  # reversible: no input
    stage1_input = 8 * 6 * 8  # a batch: 8 rows of 6 float64
    assert stages[1].telemetry.peak_bytes == max_in_flight(schedule, 1) * stage1_input


def test_accumulate_sums_k_backwards_per_update():
    _, stages = train_sim("petra", 3, num_batches=13, accumulate=2)
    assert [s.num_updates for s in stages] == [7, 7, 7]


# ---- engines ---------------------------------------------------------------------------------------
def fit(engine, K, cuts):
    model = rev_mlp()
    data = tiny_data()
    pipe = td.Pipeline(model, "petra", K, boundaries=cuts, engine=engine, timeout=30,
                       optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    pipe.fit([data.get(b) for b in range(data.per_epoch)], epochs=2, progress=False)
    return model, pipe


@pytest.mark.parametrize("K,cuts", [(2, [2]), (3, [2, 5])])
def test_dist_equals_the_simulator(K, cuts):
    got, _ = fit("dist", K, cuts)
    want, pipe = fit("sim", K, cuts)
    assert [s.reversible for s in pipe.stages][0] is True
    assert_same_params(got, want)
    for a, b in zip(got.buffers(), want.buffers()):
        assert torch.equal(a, b)


# ---- the CLI and bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("dataset,model", [("mnist1d", "revnet1d"), ("digits", "revnet_mini"),
                                           ("cifar10", "revnet18")])
def test_petra_picks_the_datasets_reversible_model(dataset, model):
    assert RunConfig(method="petra", dataset=dataset).resolved().model == model
    assert RunConfig(method="dsp", dataset=dataset).resolved().model != model
    assert RunConfig(method="petra", dataset=dataset, model="mlp").resolved().model == "mlp"


def test_cli_train_petra_mnist1d_builds_reversible_stages():
    from torchdecoupled import config_file
    from torchdecoupled.build import build_pipeline
    from torchdecoupled.cli import parser
    from torchdecoupled.cli_options import TRAIN_KEYS, _options
    a = parser().parse_args(["train", "--method", "petra", "--dataset", "mnist1d", "--stages", "8"])
    cfg = config_file.to_config(_options(a, TRAIN_KEYS)).resolved()
    assert cfg.model == "revnet1d"
    pipe, _, _ = build_pipeline(cfg)
    rev = reversible_stages(pipe.modules)
    assert len(rev) >= 4 and 0 not in rev and 7 not in rev  # the stem and the head are not reversible
    assert [k for k, s in enumerate(pipe.stages) if s.reversible] == rev


def test_a_model_without_reversible_stages_is_named():
    opt = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731
    with pytest.warns(UserWarning, match="petra: none of stages 0-1 is reversible.*as DSP"):
        td.Pipeline(tiny_model(), "petra", 3, boundaries=[2, 4], optimizer=opt)
    with pytest.warns(UserWarning, match="petra: stage 0 is not reversible"):
        td.Pipeline(rev_mlp(), "petra", 2, boundaries=[3], optimizer=opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        td.Pipeline(rev_mlp(), "petra", 3, boundaries=[2, 4], optimizer=opt)
        td.Pipeline(tiny_model(), "dsp", 3, boundaries=[2, 4], optimizer=opt)


@pytest.mark.parametrize("opts,match", [({"beta": 0.5}, "takes no option 'beta'"),
                                        ({"order": "ff"}, "unknown order 'ff'"),
                                        ({"accumulate": 0}, "accumulate must be >= 1")])
def test_bad_options_are_named(opts, match):
    with pytest.raises(ValueError, match=match):
        get_method("petra", **opts)


def test_bf16_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="--method petra rebuilds stage inputs.*use --precision float32"):
        RunConfig(method="petra", precision="bf16").resolved()
    model = rev_mlp().float()
    with pytest.raises(ValueError, match="rebuilds stage inputs by subtraction.*use precision 'float32'"):
        td.Pipeline(model, "petra", 2, boundaries=[2], precision="bf16",
                    optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1))


def test_resume_after_any_tick_is_bit_exact(tmp_path):
    # a checkpoint holds no input of a reversible stage, and the (activation, gradient) pairs in the mailbox
    from torchdecoupled import checkpoint
    from torchdecoupled.transport import LocalTransport
    data, path = tiny_data(), str(tmp_path / "checkpoint.pt")
    want = rev_mlp()
    stages, schedule = stages_of(want, [2, 3, 5], 10)
    run_sim(stages, schedule, data)
    for t in range(0, schedule.num_ticks - 1, 3):
        stages, schedule = stages_of(rev_mlp(), [2, 3, 5], 10)
        transport = LocalTransport()
        run_sim(stages, schedule, data, transport=transport, ticks=range(t + 1))
        checkpoint.save(path, stages, transport, t, [], {})
        got = rev_mlp(seed=5)  # a fresh process: other weights, new optimizers
        stages, schedule = stages_of(got, [2, 3, 5], 10)
        transport = LocalTransport()
        last, _ = checkpoint.load(path, stages, transport)
        run_sim(stages, schedule, data, transport=transport, ticks=range(last + 1, schedule.num_ticks))
        assert_same_params(got, want)
        for a, b in zip(got.buffers(), want.buffers()):
            assert torch.equal(a, b), t


def test_compare_refuses_to_put_petra_on_another_network_than_the_others(capsys):
    from torchdecoupled.cli import main
    assert main(["compare", "--methods", "bp,petra", "--dataset", "mnist1d", "--stages", "2", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model revnet1d" in err[0]
