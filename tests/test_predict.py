"""Weight prediction (DTRP): the momentum predictor is exact on a constant gradient, s = 0 equals no
prediction, the formulas for SGD and Adam, the delta predictor for any optimizer, errors that name the fix."""
import pytest
import torch
from torch import nn

from conftest import assert_same_params, cut_stages, tiny_data, tiny_model
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.methods import get_method
from torchdecoupled.predict import PREDICTORS, make_predictor
from torchdecoupled.schedule import Schedule
from torchdecoupled.stage import Stage

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
    stages, schedule = cut_stages("dtrp", 3, a, batches, 14, [2, 4], predictor=predictor)
    calls = []
    for s in stages[:-1]:
        pred = s.predictor
        s.predictor = lambda st, tau, pred=pred: calls.append(pred(st, 0)) or calls[-1]
    run_sim(stages, schedule, batches)
    assert sum(w is not None for w in calls) >= 10  # the predicted-weights path really ran
    b = tiny_model()
    stages, schedule = cut_stages("dsp", 3, b, batches, 14, [2, 4])
    run_sim(stages, schedule, batches)
    assert_same_params(a, b)


def test_prediction_changes_training():
    batches = tiny_data()
    a, b = tiny_model(), tiny_model()
    for model, name in [(a, "dtrp"), (b, "dsp")]:
        stages, schedule = cut_stages(name, 3, model, batches, 14, [2, 4])
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
