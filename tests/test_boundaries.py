"""Structured stage boundaries: stages that take and return pytrees (hidden states with an integer or bool
mask, a skip connection used two stages later, dicts, nesting) train exactly as plain PyTorch does; any
criterion, with accuracy only where it applies; checkpoints with pytrees in flight."""
import copy

import pytest
import torch
from torch import nn

from conftest import TensorBatches, assert_same_params, cut_stages, tiny_data, tiny_model
from torchdecoupled import checkpoint
from torchdecoupled.boundary import nbytes
from torchdecoupled.engines.sim import evaluate, run_sim
from torchdecoupled.heads import make_head
from torchdecoupled.methods import get_method
from torchdecoupled.metrics import epoch_record
from torchdecoupled.schedule import Schedule
from torchdecoupled.stage import Stage
from torchdecoupled.transport import LocalTransport

KINDS = ["tuple", "dict", "nested", "skip"]


# ---- models whose stages exchange pytrees -----------------------------------------------------------

def pack(kind, h, m):
    if kind == "tuple":
        return h, m                                   # bool mask
    if kind == "dict":
        return {"h": h, "mask": m.long()}             # integer mask
    return {"h": (h,), "rest": [m.to(torch.int32)]}  # nested


def unpack(kind, z):
    if kind == "tuple":
        return z
    if kind == "dict":
        return z["h"], z["mask"]
    return z["h"][0], z["rest"][0]


class Enter(nn.Module):
    """(features, keep) -> the kind's (h, mask) pytree; "skip": (h, skip = h)."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.lin = kind, nn.Linear(6, 8)

    def forward(self, x):
        feats, keep = x
        h = torch.tanh(self.lin(feats))
        return (h, h) if self.kind == "skip" else pack(self.kind, h, keep)


class Block(nn.Module):
    """Uses the mask (rows where it is set keep their input as a residual); passes the skip on unchanged."""

    def __init__(self, kind, p=0.0):
        super().__init__()
        self.kind, self.lin, self.drop = kind, nn.Linear(8, 8), nn.Dropout(p)

    def forward(self, z):
        if self.kind == "skip":
            h, skip = z
            return self.drop(torch.tanh(self.lin(h))), skip
        h, m = unpack(self.kind, z)
        return pack(self.kind, self.drop(torch.tanh(self.lin(h))) + h * m.unsqueeze(1), m)


class Leave(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.lin = kind, nn.Linear(8, 3)

    def forward(self, z):
        if self.kind == "skip":
            h, skip = z
            return self.lin(h + skip)  # the skip made at stage 0, used at stage 2
        return self.lin(unpack(self.kind, z)[0])


def model_of(kind, p=0.0, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(Enter(kind), Block(kind, p), Block(kind, p), Leave(kind)).double()


CUTS = {1: [], 3: [1, 2]}  # K = 3: every boundary carries the pytree


class PairBatches(TensorBatches):
    """tiny_data whose inputs are (features, keep): keep (bool) marks the rows with a positive first feature."""

    def get(self, b):
        x, y = super().get(b)
        return (x, x[:, 0] > 0), y


def pair_data():
    d = tiny_data()
    return PairBatches(d.x, d.y, d.bs)


def plain_loop(kind, N, lr=0.1, momentum=0.9):
    batches, model = pair_data(), model_of(kind)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for b in range(N):
        x, y = batches.get(b)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model


def trained(name, kind, K, N=14, **kw):
    batches, model = pair_data(), model_of(kind, kw.pop("p", 0.0))
    stages, schedule = cut_stages(name, K, model, batches, N, CUTS[K], **kw)
    run_sim(stages, schedule, batches)
    return model, stages


def same_tree(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tree(u, v) for u, v in zip(a, b))
    return a is None and b is None


# ---- training equals plain PyTorch ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_bp_pipeline_equals_plain_loop(kind):
    model, _ = trained("bp", kind, 3)
    assert_same_params(model, plain_loop(kind, 14))


@pytest.mark.parametrize("name", ["fdg", "dtrp"])
@pytest.mark.parametrize("kind", KINDS)
def test_k1_equals_bp(name, kind):
    model, _ = trained(name, kind, 1)
    assert_same_params(model, plain_loop(kind, 14))


@pytest.mark.parametrize("kind", KINDS)
def test_fdg_gradient_is_the_gradient_of_the_stale_computation(kind):
    # stash: the delayed backward differentiates the forward made with the weights of its time
    batches, model = pair_data(), model_of(kind)
    stages, schedule = cut_stages("fdg", 3, model, batches, 10, CUTS[3], momentum=0.0)
    applied, after = {k: [] for k in range(3)}, []
    for s in stages:
        def update(s=s, step=s.update):
            applied[s.index].append([p.grad.clone() for p in s.params])
            step()
        s.update = update
    run_sim(stages, schedule, batches, on_tick=lambda t: after.append([copy.deepcopy(s.module) for s in stages]))
    b = 5
    used = [copy.deepcopy(after[schedule.forward_tick(k, b) - (0 if schedule.update_before_forward(k) else 1)][k])
            for k in range(3)]
    x, y = batches.get(b)
    nn.functional.cross_entropy(nn.Sequential(*used)(x), y).backward()
    assert schedule.staleness(0, b) > 0
    for k in range(3):
        for e, g in zip([p.grad for p in used[k].parameters()], applied[k][b]):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_recompute_with_unchanged_weights_equals_stash(kind):
    # lr = 0: DTRP's recomputed graph (dropout masks included) must be the stashed one, leaf for leaf
    runs = []
    for name in ("fdg", "dtrp"):
        batches, model = pair_data(), model_of(kind, p=0.3)
        stages, schedule = cut_stages(name, 3, model, batches, 10, CUTS[3], lr=0.0)
        assert stages[1].recompute == (name == "dtrp")
        applied, sent = [], []
        for s in stages:
            def update(s=s, step=s.update):
                applied.append((s.index, [p.grad.clone() for p in s.params]))
                step()

            def backward(b, grad=None, s=s, back=s.backward):
                g = back(b, grad)
                sent.append((s.index, b, g))
                return g
            s.update, s.backward = update, backward
        run_sim(stages, schedule, batches)
        runs.append((applied, sent))
    (a_applied, a_sent), (b_applied, b_sent) = runs
    assert len(a_applied) == len(b_applied) == 30
    assert all(i == j and all(map(torch.equal, u, v)) for (i, u), (j, v) in zip(a_applied, b_applied))
    assert [s[:2] for s in a_sent] == [s[:2] for s in b_sent]
    assert all(same_tree(u[2], v[2]) for u, v in zip(a_sent, b_sent))
    grads_down = [g for k, _, g in b_sent if k == 2]  # in the structure of stage 2's input
    assert grads_down and all(type(g) is (tuple if kind in ("tuple", "skip") else dict) for g in grads_down)


def test_recompute_stores_the_whole_input():
    batches, model = pair_data(), model_of("tuple")
    stages, schedule = cut_stages("dtrp", 3, model, batches, 10, CUTS[3])
    seen = []

    def look(t):
        seen.append((stages[1].stored_bytes, [r.x for r in stages[1].inflight.values()]))
    run_sim(stages, schedule, batches, on_tick=look)
    one = 8 * 8 * 8 + 8  # h: 8 x 8 float64, mask: 8 bools
    assert all(stored == sum(map(nbytes, xs)) == one * len(xs) for stored, xs in seen)
    assert max(len(xs) for _, xs in seen) >= 2


# ---- the backward contract, stage by stage ----------------------------------------------------------------

class TwoInputs(nn.Module):
    """(a, b, ids) -> {"out": a @ W, "ids": ids}: b is floating but unused."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4, bias=False)

    def forward(self, z):
        a, b, ids = z
        return {"out": self.lin(a), "ids": ids}


def middle_stage(beta=1.0):
    torch.manual_seed(0)
    method = get_method("fdg", beta=beta)
    schedule = Schedule(method.family, 3, 4, method.order, method.accumulate)
    module = nn.Sequential(TwoInputs()).double()
    return Stage(1, schedule, method, module, torch.optim.SGD(module.parameters(), lr=0.1))


def test_forward_and_backward_keep_the_structure():
    s = middle_stage()
    a, b, ids = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.arange(3)
    out = s.forward(0, (a, b, ids))
    assert isinstance(out, dict) and set(out) == {"out", "ids"} and not out["out"].requires_grad
    assert torch.equal(out["ids"], ids) and out["ids"].dtype == ids.dtype  # integer leaves travel unchanged
    rec = s.inflight[0]
    assert rec.x[0].requires_grad and rec.x[1].requires_grad and rec.x[0] is not a  # fresh leaves
    assert not rec.x[2].requires_grad
    g = torch.randn(3, 4, dtype=torch.float64)
    got = s.backward(0, {"out": g, "ids": None})
    assert isinstance(got, tuple) and len(got) == 3 and got[2] is None
    torch.testing.assert_close(got[0], g @ s.module[0].lin.weight, rtol=0, atol=1e-15)
    assert torch.equal(got[1], torch.zeros_like(b))  # unused: zeros, a receiver expects a tensor
    assert s.params[0].grad is not None


def test_gradient_shrinking_applies_to_every_leaf():
    x = (torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.arange(3))
    g = {"out": torch.randn(3, 4, dtype=torch.float64), "ids": None}
    sent = []
    for beta in (1.0, 0.5):
        s = middle_stage(beta)
        s.forward(0, x)
        sent.append(s.backward(0, g))
        sent[-1] = (sent[-1], s.params[0].grad)
    (full, pfull), (half, phalf) = sent
    assert torch.equal(half[0], full[0] * 0.5) and torch.equal(phalf, pfull * 0.5)


def test_a_plain_tensor_boundary_stays_a_tensor():
    batches = tiny_data()
    stages, _ = cut_stages("fdg", 3, tiny_model(), batches, 4, [2, 4])
    x, y = batches.get(0)
    h = stages[0].forward(0, x)
    assert type(h) is torch.Tensor
    stages[1].forward(0, h)
    g = stages[1].backward(0, torch.ones(8, 8, dtype=torch.float64))
    assert type(g) is torch.Tensor and g.shape == h.shape


def test_a_gradient_of_another_structure_is_refused():
    s = middle_stage()
    s.forward(0, (torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.arange(3)))
    with pytest.raises(ValueError, match="structure"):
        s.backward(0, torch.ones(3, 4, dtype=torch.float64))


def test_local_heads_need_a_tensor():
    method = get_method("dgl")
    schedule = Schedule(method.family, 2, 2, method.order, method.accumulate)
    head = make_head(method.head, (8,), 3, (6,), stage=0, num_stages=2, seed=1).double()
    module = nn.Sequential(Enter("tuple")).double()
    s = Stage(0, schedule, method, module, torch.optim.SGD(module.parameters(), lr=0.1), head=head)
    (x, y) = pair_data().get(0)
    with pytest.raises(ValueError, match="stage 0 returns a tuple.*auxiliary head"):
        s.forward(0, x, y, x[0])


# ---- any criterion ----------------------------------------------------------------------------------------

def test_regression_has_no_accuracy():
    d = tiny_data()
    targets = torch.randn(len(d.x), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batches = TensorBatches(d.x, targets, d.bs)
    stages, schedule = cut_stages("fdg", 2, tiny_model(), batches, 6, [4], lr=0.0)
    stages[-1].criterion = nn.functional.mse_loss
    run_sim(stages, schedule, batches)
    per_stage = [s.collect(0) for s in stages]
    assert set(per_stage[-1]) >= {"loss_sum", "samples"} and not {"correct", "targets"} & set(per_stage[-1])
    model = nn.Sequential(*[m for s in stages for m in s.module])
    want = nn.functional.mse_loss(model(d.x), targets).item()
    evals = evaluate(stages, (d.x, targets), batch_size=20)  # the last stage's criterion by default
    assert set(evals) == {"test_loss"} and evals["test_loss"] == pytest.approx(want, rel=1e-12)
    rec = epoch_record(0, per_stage, evals, 0.0)
    assert "train_acc" not in rec and "test_acc" not in rec
    assert rec["train_loss"] == pytest.approx(want, rel=1e-12)  # lr = 0: the same weights throughout


def test_token_level_accuracy_counts_every_token():
    B, T, V, N = 4, 5, 7, 6
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, V, (N * B, T), generator=g), torch.randint(0, V, (N * B, T), generator=g)
    batches = TensorBatches(x, y, B)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(V, 8), nn.Tanh(), nn.Linear(8, V)).double()
    stages, schedule = cut_stages("fdg", 2, model, batches, N, [2], lr=0.0)
    stages[-1].criterion = lambda out, t: nn.functional.cross_entropy(out.flatten(0, 1), t.flatten())
    run_sim(stages, schedule, batches)
    got = stages[-1].collect(0)
    correct = int((model(x).argmax(-1) == y).sum())
    assert 0 < correct < N * B * T
    assert (got["samples"], got["targets"], got["correct"]) == (N * B, N * B * T, correct)
    rec = epoch_record(0, [got], {}, 0.0)
    assert rec["train_acc"] == correct / (N * B * T)
    evals = evaluate(stages, [{"x": x[i:i + 8], "y": y[i:i + 8]} for i in range(0, N * B, 8)])
    assert evals["test_acc"] == correct / (N * B * T)


# ---- checkpoints with pytrees in flight -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["fdg", "dtrp"])
def test_checkpoint_round_trip_with_a_tuple_in_flight(tmp_path, name):
    def fresh():
        batches, model = pair_data(), model_of("tuple", p=0.3)
        return (*cut_stages(name, 3, model, batches, 8, CUTS[3]), batches)
    stages, schedule, batches = fresh()
    run_sim(stages, schedule, batches)
    want = [p.detach().clone() for s in stages for p in s.params]
    path, tuples = str(tmp_path / "checkpoint.pt"), 0
    for t in range(schedule.num_ticks - 1):
        stages, schedule, batches = fresh()
        transport = LocalTransport()
        run_sim(stages, schedule, batches, transport=transport, ticks=range(t + 1))
        tuples += sum(isinstance(r.x, tuple) for s in stages[1:] for r in s.inflight.values())
        checkpoint.save(path, stages, transport, t, [], {})
        stages, schedule, batches = fresh()
        transport = LocalTransport()
        last, _ = checkpoint.load(path, stages, transport)
        run_sim(stages, schedule, batches, transport=transport, ticks=range(last + 1, schedule.num_ticks))
        got = [p for s in stages for p in s.params]
        assert all(map(torch.equal, got, want)), f"resuming after tick {t} changes the weights"
    assert tuples > 0  # tuples really were in flight
