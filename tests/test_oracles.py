"""The simulator's oracles: degenerate cases equal BP bit for bit, delayed gradients equal the gradient
of the stale computation, gradient shrinking compounds, labels stay aligned, tick order is irrelevant."""
import copy

import pytest
import torch
from torch import nn

from conftest import assert_same_params, batch_id_data, make_stages, plain_loop, tiny_data, tiny_model, train_sim
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.methods import METHODS


@pytest.mark.parametrize("name", sorted(METHODS))
def test_k1_equals_bp_bit_for_bit(name):
    opts = {"accumulate": 1} if name == "adl" else {}
    model, _ = train_sim(name, 1, num_batches=14, **opts)
    assert_same_params(model, plain_loop(14))


@pytest.mark.parametrize("K", [2, 3, 4])
def test_bp_pipeline_equals_plain_loop(K):
    model, _ = train_sim("bp", K, num_batches=14)
    assert_same_params(model, plain_loop(14))


@pytest.mark.parametrize("M", [2, 3])
def test_adl_k1_equals_gradient_accumulation(M):
    model, _ = train_sim("adl", 1, num_batches=13, accumulate=M)  # 13: the last window is partial
    assert_same_params(model, plain_loop(13, accumulate=M))


def one_cycle(total):
    return lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=total)


@pytest.mark.parametrize("name", ["bp", "fdg"])
def test_per_step_scheduler_k1_equals_plain_loop(name):
    N = 14
    model, stages = train_sim(name, 1, num_batches=N, scheduler=one_cycle(N), scheduler_interval="step")
    batches, plain = tiny_data(), tiny_model()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    sched = one_cycle(N)(opt)
    for b in range(N):
        x, y = batches.get(b)
        nn.functional.cross_entropy(plain(x), y).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    assert stages[0].optimizer.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert_same_params(model, plain)


def test_per_step_scheduler_steps_with_each_update_of_its_stage():
    # ADL, M = 2: 13 batches give 7 updates per stage (the last window partial), one scheduler step each
    step = lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)  # noqa: E731
    _, stages = train_sim("adl", 3, num_batches=13, accumulate=2, scheduler=step, scheduler_interval="step")
    assert [s.num_updates for s in stages] == [7, 7, 7]
    assert all(s.optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** 7 for s in stages)
    _, stages = train_sim("adl", 3, num_batches=12, accumulate=2, scheduler=step)  # "epoch": 6 batches each
    assert all(s.optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** 2 for s in stages)


def test_unknown_scheduler_interval():
    with pytest.raises(ValueError, match="scheduler_interval 'batch' .*epoch, step"):
        train_sim("bp", 1, scheduler_interval="batch")


def _snapshots_and_grads(name, K, num_batches, **opts):
    """Train, recording every stage's weights after each tick and the gradient each U applies."""
    batches = tiny_data()
    model = tiny_model()
    stages, schedule = make_stages(name, K, model, batches, num_batches, momentum=0.0, **opts)
    after_tick, applied = [], {k: [] for k in range(K)}
    for s in stages:
        step = s.update

        def update(s=s, step=step):
            applied[s.index].append([p.grad.clone() for p in s.params])
            step()
        s.update = update
    run_sim(stages, schedule, batches, on_tick=lambda t: after_tick.append(
        [copy.deepcopy(s.module) for s in stages]))
    return batches, schedule, stages, after_tick, applied


@pytest.mark.parametrize("name,K", [("fdg", 2), ("fdg", 3), ("ddg", 3)])
def test_delayed_gradient_is_the_gradient_of_the_stale_computation(name, K):
    batches, schedule, stages, after_tick, applied = _snapshots_and_grads(name, K, 10)
    b = 5
    # The weights stage k used for batch b's forward: after tick t_f - 1, or after t_f if U runs before F.
    used = []
    for k in range(K):
        t_f = schedule.forward_tick(k, b)
        used.append(copy.deepcopy(after_tick[t_f if schedule.update_before_forward(k) else t_f - 1][k]))
    x, y = batches.get(b)
    h = x
    for m in used:
        h = m(h)
    nn.functional.cross_entropy(h, y).backward()
    for k in range(K):
        expected = [p.grad for p in used[k].parameters()]
        got = applied[k][b]  # accumulate=1: the b-th update applies batch b's gradient
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
    # and it really is stale: the current weights would give another gradient
    assert schedule.staleness(0, b) > 0
    assert not torch.equal(used[0][0].weight, after_tick[schedule.backward_tick(0, b)][0][0].weight)


def test_beta_compounds_per_stage():
    K = 3
    _, _, _, _, plain = _snapshots_and_grads("fdg", K, 6, beta=1.0)
    _, _, _, _, shrunk = _snapshots_and_grads("fdg", K, 6, beta=0.5)
    # The first gradient of every stage comes from the initial weights in both runs; 0.5 is a power of
    # two, so the shrunk gradient is exactly beta^(K-1-k) times the unshrunk one.
    for k in range(K):
        for g1, g2 in zip(plain[k][0], shrunk[k][0]):
            assert torch.equal(g2, g1 * 0.5 ** (K - 1 - k))


def test_weight_decay_is_not_shrunk():
    opt = lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.1)  # noqa: E731
    a, _ = train_sim("fdg", 2, num_batches=1, beta=0.5, optimizer=opt)
    b, _ = train_sim("fdg", 2, num_batches=1, beta=1.0, optimizer=opt)
    # one batch, one update per stage: w1 = w0 - lr*(beta*g + wd*w0): differs only by the shrunk part
    w0 = tiny_model()[0].weight
    da, db = w0 - a[0].weight, w0 - b[0].weight
    decay = 0.1 * 0.1 * w0
    torch.testing.assert_close(da - decay, 0.5 * (db - decay), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,K,opts", [("fdg", 3, {}), ("ddg", 4, {}), ("adl", 3, {"accumulate": 2}),
                                         ("bp", 3, {})])
def test_stage_order_inside_a_tick_changes_nothing(name, K, opts):
    ref, _ = train_sim(name, K, **opts)
    for order in [list(reversed(range(K))), [1, 0] + list(range(2, K))]:
        other, _ = train_sim(name, K, stage_order=order, **opts)
        assert_same_params(ref, other)


@pytest.mark.parametrize("name,K", [("fdg", 3), ("ddg", 3), ("adl", 4), ("bp", 2)])
def test_loss_on_batch_b_uses_batch_b_labels(name, K):
    bs, C = 4, 5
    batches, model = batch_id_data(bs=bs, classes=C)
    stages, schedule = make_stages(name, K, model, batches, 10, lr=0.0, momentum=0.0)
    seen = []

    def criterion(out, target):
        seen.append((out[:, 0].round().long() % C, target))
        return (out ** 2).mean() * 0
    stages[-1].criterion = criterion
    run_sim(stages, schedule, batches)
    assert len(seen) == 10
    for ids, target in seen:
        assert torch.equal(ids, target)


def test_measured_staleness_equals_schedule():
    for name, opts in [("fdg", {"order": "fb"}), ("adl", {"accumulate": 2, "order": "fb"}),
                       ("adl", {"accumulate": 4, "order": "fb"}), ("fdg", {}), ("ddg", {})]:
        _, stages = train_sim(name, 3, num_batches=24, **opts)
        schedule = stages[0].schedule
        for s in stages:
            measured = dict(s.telemetry.staleness)
            assert measured == {b: schedule.staleness(s.index, b) for b in range(24)}, (name, opts, s.index)


def test_fdg_k3_measured_staleness_is_4_2_0():
    _, stages = train_sim("fdg", 3, num_batches=24, order="fb")
    steady = [{tau for b, tau in s.telemetry.staleness if 8 <= b < 16} for s in stages]
    assert steady == [{4}, {2}, {0}]


@pytest.mark.parametrize("M,table", [(2, [[2, 2], [1, 1], [0, 0]]),
                                     (4, [[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])])
def test_adl_measured_staleness_matches_the_paper_figure(M, table):
    _, stages = train_sim("adl", 3, num_batches=32, accumulate=M, order="fb")
    for k, s in enumerate(stages):
        tau = dict(s.telemetry.staleness)
        assert [tau[4 * M + j] for j in range(M)] == table[k]


def test_stash_never_mixes_old_activations_with_new_weights():
    # Plain autograd would raise "modified by an inplace operation" here; the stage must not, and the
    # result must differ from the (wrong) gradient taken with the updated weights.
    model, stages = train_sim("fdg", 3, num_batches=10)
    assert all(not s.inflight for s in stages)
    assert all(torch.isfinite(p).all() for p in model.parameters())
