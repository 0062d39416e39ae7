"""Recomputation (FR, DSP, DTRP) and weight prediction: oracles that fail when the behaviour breaks.

Recompute with unchanged weights equals stash bit for bit (dropout masks and BatchNorm included); the
recomputed gradient is the gradient of the current weights at the stored input; BatchNorm statistics move
once per batch; only inputs are stored; the momentum predictor is exact on a constant gradient; s = 0
equals no prediction; K = 1 equals BP.
"""
import copy
import json

import pytest
import torch
from torch import nn

from conftest import assert_same_params, plain_loop, tiny_data, tiny_model
from torchdecoupled.config import RunConfig
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.methods import get_method
from torchdecoupled.predict import PREDICTORS, make_predictor
from torchdecoupled.schedule import Schedule
from torchdecoupled.stage import Stage
from torchdecoupled.train import train


def bn_dropout_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3),
                         nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3),
                         nn.Linear(8, 3)).double()


def build(name, K, model, batches, N, cuts, lr=0.1, momentum=0.9, predictor=None, **opts):
    """Stages of `model` cut at `cuts`; DTRP stages get a fresh predictor each (make_predictor)."""
    method = get_method(name, **opts)
    schedule = Schedule(method.family, K, N, method.order, method.accumulate)
    edges = [0, *cuts, len(model)]
    stages = []
    for k in range(K):
        m = model[edges[k]:edges[k + 1]]
        pred = predictor or (method.predictor if method.predictor != "none" else None)
        stages.append(Stage(k, schedule, method, m, torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum),
                            predictor=make_predictor(pred) if pred else None, seed=3,
                            batches_per_epoch=batches.per_epoch))
    return stages, schedule


def record_updates(stages):
    """Wrap each stage's update to record the gradient it applies and its backward to record what it sends."""
    applied, sent = {s.index: [] for s in stages}, {s.index: [] for s in stages}
    for s in stages:
        step, back = s.update, s.backward

        def update(s=s, step=step):
            applied[s.index].append([p.grad.clone() for p in s.params])
            step()

        def backward(b, grad=None, s=s, back=back):
            g = back(b, grad)
            sent[s.index].append(None if g is None else g.clone())
            return g
        s.update, s.backward = update, backward
    return applied, sent


# ---- K = 1 and zero delay ------------------------------------------------------------------------

@pytest.mark.parametrize("name,opts", [("fr", {}), ("dsp", {}), ("dtrp", {}), ("dtrp", {"predictor": "delta"})])
def test_k1_equals_bp_bit_for_bit(name, opts):
    batches = tiny_data()
    model = tiny_model()
    stages, schedule = build(name, 1, model, batches, 14, [], **opts)
    run_sim(stages, schedule, batches)
    assert_same_params(model, plain_loop(14))


@pytest.mark.parametrize("rec,stash,K,opts", [("dsp", "fdg", 2, {}), ("dsp", "fdg", 3, {}), ("fr", "ddg", 3, {}),
                                               ("dtrp", "fdg", 3, {}), ("dtrp", "fdg", 3, {"predictor": "delta"}),
                                               ("dsp", "fdg", 3, {"order": "fb"})])
def test_recompute_with_unchanged_weights_equals_stash_bit_for_bit(rec, stash, K, opts):
    # lr = 0: the weights at B are the weights of F, so recomputing must reproduce the stashed graph
    # exactly, with the same dropout masks and the same BatchNorm batch statistics.
    batches = tiny_data()
    runs = []
    for name, o in [(stash, {"order": opts["order"]} if "order" in opts else {}), (rec, opts)]:
        stages, schedule = build(name, K, bn_dropout_model(), batches, 10, [4, 8][:K - 1], lr=0.0, **o)
        assert stages[0].recompute == (name == rec)
        runs.append(record_updates(stages))
        run_sim(stages, schedule, batches)
    (a_applied, a_sent), (b_applied, b_sent) = runs
    for k in range(K):
        assert len(a_applied[k]) == len(b_applied[k]) == 10
        for ga, gb in zip(a_applied[k], b_applied[k]):
            for x, y in zip(ga, gb):
                assert torch.equal(x, y)
        for ga, gb in zip(a_sent[k], b_sent[k]):
            assert (ga is None and gb is None) or torch.equal(ga, gb)


def test_dropout_masks_equal_in_forward_and_recompute():
    batches = tiny_data()
    stages, schedule = build("dsp", 2, bn_dropout_model(), batches, 6, [4], lr=0.0)
    s0, outs, cur = stages[0], {}, {}
    call, fwd, back = s0._call, s0.forward, s0.backward

    def spy_call(x, weights, buffers=None):
        out = call(x, weights, buffers)
        outs[cur["op"], cur["b"]] = out.detach().clone()
        return out

    def spy_forward(b, *args):
        cur.update(op="F", b=b)
        return fwd(b, *args)

    def spy_backward(b, grad=None):
        cur.update(op="B", b=b)
        return back(b, grad)
    s0._call, s0.forward, s0.backward = spy_call, spy_forward, spy_backward
    run_sim(stages, schedule, batches)
    assert sorted(outs) == sorted((op, b) for op in "FB" for b in range(6))
    for b in range(6):
        assert torch.equal(outs["F", b], outs["B", b])
        assert (outs["F", b] == 0).any()  # the dropout really dropped something
    masks = [outs["F", b] == 0 for b in range(6)]
    assert not all(torch.equal(masks[0], m) for m in masks[1:])  # and differently per batch


# ---- what the recompute differentiates -------------------------------------------------------------

def _weights_after_ticks(name, K, N, **opts):
    batches = tiny_data()
    model = tiny_model()
    stages, schedule = build(name, K, model, batches, N, [2, 4, 6][:K - 1], momentum=0.0, **opts)
    applied, _ = record_updates(stages)
    after = []
    run_sim(stages, schedule, batches, on_tick=lambda t: after.append([copy.deepcopy(s.module) for s in stages]))
    return batches, schedule, applied, after


@pytest.mark.parametrize("name,K", [("dsp", 2), ("dsp", 3), ("fr", 3), ("dsp", 4)])
def test_recomputed_gradient_is_the_gradient_of_the_current_weights(name, K):
    batches, schedule, applied, after = _weights_after_ticks(name, K, 10)
    b = 5
    x, y = batches.get(b)
    h, inputs, fwd = x, [], []
    for k in range(K):  # the values sent up: computed at F with the weights of that moment
        t_f = schedule.forward_tick(k, b)
        used = after[t_f if schedule.update_before_forward(k) else t_f - 1][k]
        inputs.append(h.detach())
        fwd.append(used)
        h = used(h.detach())
    last = copy.deepcopy(fwd[K - 1])
    xin = inputs[K - 1].clone().requires_grad_(True)
    grads = torch.autograd.grad(nn.functional.cross_entropy(last(xin), y), list(last.parameters()) + [xin])
    expected = {K - 1: grads[:-1]}
    g = grads[-1]
    for k in range(K - 2, -1, -1):  # each lower stage recomputes with its weights at B
        cur = copy.deepcopy(after[schedule.backward_tick(k, b) - 1][k])
        xin = inputs[k].clone().requires_grad_(True)
        grads = torch.autograd.grad(cur(xin), list(cur.parameters()) + [xin], g)
        expected[k], g = grads[:-1], grads[-1]
    for k in range(K):
        for e, got in zip(expected[k], applied[k][b]):
            torch.testing.assert_close(got, e, rtol=1e-12, atol=1e-14)
    # and the current weights really differ from those of the forward (the test would be vacuous)
    assert not torch.equal(fwd[0][0].weight, after[schedule.backward_tick(0, b) - 1][0][0].weight)


def test_dtrp_predictor_gets_the_stage_staleness():
    batches = tiny_data()
    stages, schedule = build("dtrp", 3, tiny_model(), batches, 12, [2, 4], momentum=0.0)
    seen = {s.index: [] for s in stages}
    for s in stages:
        if s.predictor is not None:
            pred = s.predictor
            s.predictor = lambda st, tau, pred=pred: seen[st.index].append(tau) or pred(st, tau)
    run_sim(stages, schedule, batches)
    for k in range(2):
        assert seen[k] == [schedule.staleness(k, b) for b in range(12)]
    assert seen[2] == []  # the last stage is not delayed: no recompute, no prediction
    assert seen[0][6:] == [3] * 6 and seen[1][6:] == [1] * 6


# ---- BatchNorm statistics and stored bytes ---------------------------------------------------------

def bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 8), nn.BatchNorm1d(8),
                         nn.Tanh(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).double()


@pytest.mark.parametrize("name", ["dsp", "fr", "dtrp"])
def test_batchnorm_statistics_move_once_per_batch_under_recompute(name):
    batches, N = tiny_data(), 9
    for lr in (0.1, 0.0):
        model = bn_model()
        stages, schedule = build(name, 3, model, batches, N, [3, 6], lr=lr)
        run_sim(stages, schedule, batches)
        bns = [m for m in model if isinstance(m, nn.BatchNorm1d)]
        assert [int(m.num_batches_tracked) for m in bns] == [N] * 3
    # lr = 0: the running statistics equal those of a plain forward-only pass over the same batches
    oracle = bn_model()
    with torch.no_grad():
        for b in range(N):
            oracle(batches.get(b)[0])
    for m, o in zip(model, oracle):
        if isinstance(m, nn.BatchNorm1d):
            assert torch.equal(m.running_mean, o.running_mean) and torch.equal(m.running_var, o.running_var)


@pytest.mark.parametrize("K", [2, 3, 4])
def test_recompute_stores_only_the_inputs(K):
    batches, N = tiny_data(), 12
    stages, schedule = build("dsp", K, tiny_model(), batches, N, [2, 4, 6][:K - 1])
    checks = []

    def check(t):
        for s in stages[:-1]:
            inputs = sum(r.x.nbytes for r in s.inflight.values())
            checks.append(s.stored_bytes == inputs and all(r.root is None and r.params is None
                                                           for r in s.inflight.values()))
    run_sim(stages, schedule, batches, on_tick=check)
    assert checks and all(checks)
    one = 8 * 6 * 8  # a batch input of stage 0: 8 rows x 6 float64 features
    assert stages[0].telemetry.peak_bytes == (2 * K - 2) * one  # order "bf": 2K-2 batches held after F
    for s in stages[1:-1]:
        assert s.telemetry.peak_bytes == (2 * (K - 1 - s.index)) * 8 * 8 * 8
    fdg, _ = build("fdg", K, tiny_model(), batches, N, [2, 4, 6][:K - 1])
    run_sim(fdg, _, batches)
    assert fdg[0].telemetry.peak_bytes > 2 * stages[0].telemetry.peak_bytes


# ---- predictors ------------------------------------------------------------------------------------

def _constant_gradient_pipeline(predictor, opt_kwargs, N=12):
    """K = 3, DTRP; only stage 0 learns. Inputs are all equal and the loss is linear in the output, so
    stage 0's gradient is constant; every number is a small dyadic rational, so float64 is exact."""
    K, bs = 3, 4
    x = torch.tensor([[1.0, 2.0, -1.0, 0.5]]).repeat(bs * N, 1).double()
    y = torch.zeros(bs * N, dtype=torch.long)
    batches = tiny_data()
    batches.x, batches.y, batches.bs, batches.per_epoch = x, y, bs, N
    layers = [nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in layers:
            m.weight.copy_(torch.randint(-4, 5, m.weight.shape, generator=g) / 4)
            m.bias.copy_(torch.randint(-4, 5, m.bias.shape, generator=g) / 4)
    layers = [m.double() for m in layers]
    method = get_method("dtrp", predictor=predictor)
    schedule = Schedule(method.family, K, N, method.order)
    c = torch.tensor([[1.0, -2.0]]).double()
    stages = []
    for k, m in enumerate(layers):
        opt = torch.optim.SGD(m.parameters(), lr=2.0 ** -6 if k == 0 else 0.0, **opt_kwargs)
        stages.append(Stage(k, schedule, method, nn.Sequential(m), opt, batches_per_epoch=N,
                            predictor=make_predictor(predictor) if k < K - 1 else None,
                            criterion=lambda out, y: (out * c).sum()))
    return stages, schedule, batches


@pytest.mark.parametrize("predictor,opt_kwargs", [("momentum", {"momentum": 0.5, "dampening": 0.5}),
                                                  ("momentum", {"momentum": 0.0}),
                                                  ("delta", {"momentum": 0.0}),
                                                  ("delta", {"momentum": 0.5, "dampening": 0.5})])
def test_predictor_is_exact_on_a_constant_gradient(predictor, opt_kwargs):
    stages, schedule, batches = _constant_gradient_pipeline(predictor, opt_kwargs)
    s0 = stages[0]
    predicted, at_backward = [], {}
    pred, back = s0.predictor, s0.backward

    def spy_pred(st, s):
        w = pred(st, s)
        predicted.append(None if w is None else [t.clone() for t in w])
        return w

    def spy_back(b, grad=None):
        at_backward[b] = [p.detach().clone() for p in s0.params]
        return back(b, grad)
    s0.predictor, s0.backward = spy_pred, spy_back
    run_sim(stages, schedule, batches)
    assert len(predicted) == 12 and schedule.staleness(0, 8) == 3
    for b, w in enumerate(predicted):
        assert (w is None) == (b < 4)  # stage 0 first updates in tick 4, before the F of batch 4
        if w is not None:
            for wp, wb in zip(w, at_backward[b]):
                assert torch.equal(wp, wb), (b, (wp - wb).abs().max())
    # the weights did move in between (the prediction is not trivially the current weights)
    assert not torch.equal(at_backward[8][0], at_backward[5][0])


def test_no_prediction_misses_the_future_weights():
    # The negative control of the test above: without prediction the forward's weights are stale.
    stages, schedule, batches = _constant_gradient_pipeline("momentum", {"momentum": 0.0})
    s0 = stages[0]
    s0.predictor = None
    at_forward, at_backward = {}, {}
    fwd, back = s0.forward, s0.backward

    def spy_forward(b, *args):
        at_forward[b] = [p.detach().clone() for p in s0.params]
        return fwd(b, *args)

    def spy_backward(b, grad=None):
        at_backward[b] = [p.detach().clone() for p in s0.params]
        return back(b, grad)
    s0.forward, s0.backward = spy_forward, spy_backward
    run_sim(stages, schedule, batches)
    assert not torch.equal(at_forward[8][0], at_backward[8][0])


@pytest.mark.parametrize("predictor", ["momentum", "delta"])
def test_prediction_with_zero_staleness_equals_none_bit_for_bit(predictor):
    batches = tiny_data()
    a = tiny_model()
    stages, schedule = build("dtrp", 3, a, batches, 14, [2, 4], predictor=predictor)
    calls = []
    for s in stages[:-1]:
        pred = s.predictor
        s.predictor = lambda st, tau, pred=pred: calls.append(pred(st, 0)) or calls[-1]
    run_sim(stages, schedule, batches)
    assert sum(w is not None for w in calls) >= 10  # the predicted-weights path really ran
    b = tiny_model()
    stages, schedule = build("dsp", 3, b, batches, 14, [2, 4])
    run_sim(stages, schedule, batches)
    assert_same_params(a, b)


def test_prediction_changes_training():
    batches = tiny_data()
    a, b = tiny_model(), tiny_model()
    for model, name in [(a, "dtrp"), (b, "dsp")]:
        stages, schedule = build(name, 3, model, batches, 14, [2, 4])
        run_sim(stages, schedule, batches)
    assert not torch.equal(a[0].weight, b[0].weight)


def _stage_with(opt_factory):
    m = nn.Sequential(nn.Linear(3, 2)).double()
    sched = Schedule("decoupled", 2, 4)
    return Stage(0, sched, get_method("dtrp"), m, opt_factory(m.parameters()))


def _step(stage, n=3):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        for p in stage.params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        stage.update()


def test_momentum_predictor_formulas_for_sgd_and_adam():
    # SGD with momentum: w - s * lr * momentum_buffer
    st = _stage_with(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01))
    pred = make_predictor("momentum")
    assert pred(st, 2) is None  # nothing to extrapolate before the first update
    _step(st)
    for w, p in zip(pred(st, 2), st.params):
        torch.testing.assert_close(w, p - 2 * 0.1 * st.optimizer.state[p]["momentum_buffer"], rtol=0, atol=1e-15)
    for w, p in zip(pred(st, 0), st.params):
        assert torch.equal(w, p)
    # Adam: bias-corrected step direction, with a one-time warning
    st = _stage_with(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.9), eps=1e-6))
    pred = make_predictor("momentum")
    with pytest.warns(UserWarning, match="Adam's bias-corrected step direction"):
        pred(st, 1)
    _step(st)
    for w, p in zip(pred(st, 2), st.params):
        state = st.optimizer.state[p]
        m, v = state["exp_avg"] / (1 - 0.8 ** 3), state["exp_avg_sq"] / (1 - 0.9 ** 3)  # after 3 steps
        torch.testing.assert_close(w, p - 2 * 0.01 * m / (v.sqrt() + 1e-6), rtol=1e-12, atol=1e-15)
    # AdamW: its decoupled weight decay is part of the direction
    st = _stage_with(lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1))
    pred = make_predictor("momentum")
    with pytest.warns(UserWarning):
        pred(st, 1)
    _step(st, 1)
    for w, p in zip(pred(st, 2), st.params):
        state = st.optimizer.state[p]
        m, v = state["exp_avg"] / (1 - 0.9), state["exp_avg_sq"] / (1 - 0.999)
        torch.testing.assert_close(w, p - 2 * 0.01 * (m / (v.sqrt() + 1e-8) + 0.1 * p), rtol=1e-12, atol=1e-15)


def test_delta_predictor_extrapolates_the_last_step_of_any_optimizer():
    st = _stage_with(lambda ps: torch.optim.RMSprop(ps, lr=0.01))
    pred = make_predictor("delta")
    assert pred(st, 3) is None
    _step(st, 2)
    before = [p.detach().clone() for p in st.params]
    _step(st, 1)
    for w, p, b in zip(pred(st, 3), st.params, before):
        torch.testing.assert_close(w, p + 3 * (p - b), rtol=0, atol=1e-15)


def test_predictor_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"unknown predictor 'mom' \(valid: delta, momentum, none\)"):
        make_predictor("mom")
    with pytest.raises(ValueError, match="unknown predictor 'mom'"):
        get_method("dtrp", predictor="mom")
    st = _stage_with(lambda ps: torch.optim.RMSprop(ps, lr=0.01))
    with pytest.raises(ValueError, match="supports SGD, Adam and AdamW .*RMSprop.* use predictor 'delta'"):
        make_predictor("momentum")(st, 1)
    pred = make_predictor("delta")
    pred(st, 1)
    with pytest.raises(ValueError, match="one per stage"):
        pred(_stage_with(lambda ps: torch.optim.SGD(ps, lr=0.1)), 1)
    assert set(PREDICTORS) == {"none", "momentum", "delta"}


def test_dtrp_options():
    m = get_method("dtrp", gamma=0.5)
    assert m.beta == 0.5 and m.activations == "recompute" and m.order == "bf" and m.predictor == "momentum"
    assert m.partition == "flops" and get_method("dsp").partition == "params"
    with pytest.raises(ValueError, match="same factor"):
        get_method("dtrp", gamma=0.5, beta=0.8)
    with pytest.raises(ValueError, match="takes no option 'accumulate'"):
        get_method("dtrp", accumulate=2)
    assert get_method("fr").family == "locked" and get_method("dsp").family == "decoupled"


# ---- end to end --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fr", "dsp", "dtrp"])
def test_trains_end_to_end_on_mnist1d(name):
    s = train(RunConfig(method=name, stages=3, dataset="mnist1d", epochs=1, progress=False))
    assert s["test_acc"] > 0.15 and s["train_loss"] == s["train_loss"]
    assert len(s["peak_stored_bytes"]) == 3
    assert s["config"]["partition"] == ("flops" if name == "dtrp" else "params")


@pytest.mark.parametrize("extra", [[], ["--predictor", "delta"], ["--momentum", "0"]])
def test_dtrp_resumes_bit_exact_with_its_predictor_state(tmp_path, extra):
    # order "bf" updates before the first forward after a resume: the predictor must have seen that update
    from torchdecoupled.cli import main
    base = ["train", "--method", "dtrp", "--stages", "3", "--dataset", "mnist1d", "--batch-size", "500",
            "--epochs", "3", "--no-progress", *extra]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*base, "--out", str(a), "--checkpoint"]) == 0
    assert main([*base, "--out", str(b), "--resume", str(a)]) == 0
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["params_sha256"] == sb["params_sha256"]
