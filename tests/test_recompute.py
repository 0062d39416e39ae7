"""Recomputation (FR, DSP, DTRP): oracles that fail when the behaviour breaks (predictors: test_predict.py).

Recompute with unchanged weights equals stash bit for bit (dropout masks and BatchNorm included); the
recomputed gradient is the gradient of the current weights at the stored input; BatchNorm statistics move
once per batch; only inputs are stored; K = 1 equals BP.
"""
import copy
import json

import pytest
import torch
from torch import nn

from conftest import assert_same_params, cut_stages, plain_loop, tiny_data, tiny_model
from torchdecoupled.config import RunConfig
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.run import train


def bn_dropout_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3),
                         nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3),
                         nn.Linear(8, 3)).double()


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
    stages, schedule = cut_stages(name, 1, model, batches, 14, [], **opts)
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
        stages, schedule = cut_stages(name, K, bn_dropout_model(), batches, 10, [4, 8][:K - 1], lr=0.0, **o)
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
    stages, schedule = cut_stages("dsp", 2, bn_dropout_model(), batches, 6, [4], lr=0.0)
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
    stages, schedule = cut_stages(name, K, model, batches, N, [2, 4, 6][:K - 1], momentum=0.0, **opts)
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
    stages, schedule = cut_stages("dtrp", 3, tiny_model(), batches, 12, [2, 4], momentum=0.0)
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
        stages, schedule = cut_stages(name, 3, model, batches, N, [3, 6], lr=lr)
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
    stages, schedule = cut_stages("dsp", K, tiny_model(), batches, N, [2, 4, 6][:K - 1])
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
    fdg, _ = cut_stages("fdg", K, tiny_model(), batches, N, [2, 4, 6][:K - 1])
    run_sim(fdg, _, batches)
    assert fdg[0].telemetry.peak_bytes > 2 * stages[0].telemetry.peak_bytes


# ---- end to end --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fr", "dsp", "dtrp"])
def test_trains_end_to_end_on_mnist1d(name):
    s = train(RunConfig(method=name, stages=3, dataset="mnist1d", epochs=1, progress=False))
    assert s["test_acc"] > 0.15 and s["train_loss"] == s["train_loss"]
    assert len(s["peak_stored_bytes"]) == 3
    assert s["config"]["partition"] == ("flops" if name == "dtrp" else "params")


@pytest.mark.parametrize("extra", [[], ["--predictor", "delta"], ["--momentum", "0"]])
def test_dtrp_resumes_bit_exact_with_its_predictor_state(tmp_path, monkeypatch, extra):
    # order "bf" updates before the first forward after a resume: the predictor must have seen that update
    from checkpoint_cases import keep_each_checkpoint
    from torchdecoupled.cli import main
    base = ["train", "--method", "dtrp", "--stages", "3", "--dataset", "mnist1d", "--batch-size", "500",
            "--epochs", "3", "--no-progress", *extra]
    a, b = tmp_path / "a", tmp_path / "b"
    after = keep_each_checkpoint(monkeypatch)
    assert main([*base, "--out", str(a), "--checkpoint"]) == 0
    assert main([*base, "--out", str(b), "--resume", after(a, 1)]) == 0  # stopped after epoch 1 of 3
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["params_sha256"] == sb["params_sha256"]


class ShortEvery3rd:
    """tiny_data's batches, every third one cut to 5 rows: two input shapes."""

    def __init__(self, batches):
        self.inner, self.per_epoch = batches, batches.per_epoch

    def get(self, b):
        x, y = self.inner.get(b)
        return (x[:5], y[:5]) if b % 3 == 2 else (x, y)


def test_stash_counts_saved_bytes_once_per_input_shape_and_equal_to_a_count_every_batch():
    """A Stage counts what a forward saves (saved-tensor hooks) at the first forward of each input shape and
    reuses the count: every in-flight batch's bytes equal those of a stage that counts at every forward."""
    batches = ShortEvery3rd(tiny_data())
    runs = []
    for recount in (False, True):
        stages, schedule = cut_stages("fdg", 3, tiny_model(), batches, 12, [2, 4])
        seen = []

        def look(t, stages=stages):
            seen.append([{b: r.nbytes for b, r in s.inflight.items()} for s in stages])
            for s in stages:
                if recount:
                    s._saved.clear()
        run_sim(stages, schedule, batches, on_tick=look)
        runs.append((seen, [s.telemetry.peak_bytes for s in stages], [len(s._saved) for s in stages]))
    (cached, peaks, keys), (counted, peaks_counted, _) = runs
    assert cached == counted and peaks == peaks_counted
    assert keys == [2, 2, 2]  # the 8-row and the 5-row shapes
    sizes = {n for tick in cached for n in tick[0].values()}
    assert len(sizes) == 2 and all(n > 0 for n in sizes)  # stage 0 saves less for a 5-row batch

