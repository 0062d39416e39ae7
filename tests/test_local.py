"""Local learning (DGL, InfoPro, local): no gradient crosses a stage boundary, each head gets its batch's
labels and input, the pipeline equals the sequential greedy loop, K = 1 equals BP."""
import copy

import pytest
import torch
from torch import nn

from conftest import assert_same_params, batch_id_data, plain_loop, tiny_data, tiny_model
from torchdecoupled.config import RunConfig
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.heads import AuxHead, make_head
from torchdecoupled.methods import get_method
from torchdecoupled.schedule import Schedule
from torchdecoupled.stage import Stage
from torchdecoupled.run import train

CUTS = [2, 4, 6]


def local_stages(name, K, model, batches, N, heads=None, lr=0.1, momentum=0.9, **opts):
    """Stages of the tiny model cut at CUTS; stage k < K-1 gets heads[k] (default: the method's head)."""
    method = get_method(name, **opts)
    schedule = Schedule(method.family, K, N)
    edges = [0, *CUTS[:K - 1], len(model)]
    if heads is None:
        heads = [make_head(method.head, (8,), 3, (6,), stage=k, num_stages=K, seed=10 + k).double()
                 for k in range(K - 1)]
    stages = []
    for k in range(K):
        m = model[edges[k]:edges[k + 1]]
        head = heads[k] if k < K - 1 else None
        params = list(m.parameters()) + (list(head.parameters()) if head is not None else [])
        stages.append(Stage(k, schedule, method, m, torch.optim.SGD(params, lr=lr, momentum=momentum),
                            head=head, batches_per_epoch=batches.per_epoch))
    return stages, schedule, heads


@pytest.mark.parametrize("name", ["dgl", "infopro", "local"])
def test_k1_equals_bp_bit_for_bit(name):
    batches = tiny_data()
    model = tiny_model()
    stages, schedule, _ = local_stages(name, 1, model, batches, 14)
    run_sim(stages, schedule, batches)
    assert_same_params(model, plain_loop(14))


def greedy_loop(model, heads, K, batches, N, lr=0.1, momentum=0.9):
    """The oracle: DGL's sequential algorithm. For each batch, each stage in turn trains on its own loss
    with the detached output of the stage below."""
    edges = [0, *CUTS[:K - 1], len(model)]
    mods = [model[edges[k]:edges[k + 1]] for k in range(K)]
    opts = [torch.optim.SGD(list(m.parameters()) + (list(heads[k].parameters()) if k < K - 1 else []),
                            lr=lr, momentum=momentum) for k, m in enumerate(mods)]
    for b in range(N):
        x, y = batches.get(b)
        h = x
        for k, m in enumerate(mods):
            out = m(h.detach())
            loss = heads[k].loss(out, y, x) if k < K - 1 else nn.functional.cross_entropy(out, y)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            h = out
    return model


@pytest.mark.parametrize("name,K", [("dgl", 2), ("dgl", 3), ("infopro", 3), ("local", 4)])
def test_pipeline_equals_the_sequential_greedy_loop_bit_for_bit(name, K):
    batches, N = tiny_data(), 12
    model = tiny_model()
    oracle_model = copy.deepcopy(model)
    stages, schedule, heads = local_stages(name, K, model, batches, N)
    oracle_heads = copy.deepcopy(heads)
    run_sim(stages, schedule, batches)
    greedy_loop(oracle_model, oracle_heads, K, batches, N)
    assert_same_params(model, oracle_model)
    for h, o in zip(heads, oracle_heads):
        assert_same_params(h, o)


def test_no_gradient_crosses_a_stage_boundary():
    batches, K = tiny_data(), 3
    model = tiny_model()
    stages, schedule, _ = local_stages("dgl", K, model, batches, 8)
    received, returned = [], []
    for s in stages:
        fwd, back = s.forward, s.backward

        def forward(b, x, *a, s=s, fwd=fwd):
            if s.index > 0:
                received.append(x)
            out = fwd(b, x, *a)
            assert out is None or (out.grad_fn is None and not out.requires_grad)  # what is sent up
            return out

        def backward(b, grad=None, back=back):
            assert grad is None  # nothing comes down
            returned.append(back(b, grad))
            return returned[-1]
        s.forward, s.backward = forward, backward
    run_sim(stages, schedule, batches)
    assert len(received) == 16 and len(returned) == 24
    assert all(x.grad is None and x.grad_fn is None and not x.requires_grad for x in received)
    assert all(g is None for g in returned)
    # and stage 0 learned from its own head alone: the same as training stage 0 + head 0 by themselves
    solo = tiny_model()
    solo_head = make_head("dgl", (8,), 3, (6,), stage=0, num_stages=K, seed=10).double()
    opt = torch.optim.SGD(list(solo[:2].parameters()) + list(solo_head.parameters()), lr=0.1, momentum=0.9)
    for b in range(8):
        x, y = batches.get(b)
        opt.zero_grad()
        solo_head.loss(solo[:2](x), y, x).backward()
        opt.step()
    assert_same_params(model[:2], solo[:2])


class RecordingHead(AuxHead):
    """A user's own head: records which batch its features, labels and input come from."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def loss(self, h, y, x0):
        self.seen.append((h[:, 0].round().long(), y, x0[:, 0].round().long()))
        return (h * self.w).sum()


@pytest.mark.parametrize("K", [2, 3, 4])
def test_each_head_gets_the_labels_and_input_of_its_batch(K):
    bs, C = 4, 5
    batches, model = batch_id_data(bs=bs, classes=C)
    seen = [[] for _ in range(K - 1)]
    heads = [RecordingHead(seen[k]) for k in range(K - 1)]
    stages, schedule, _ = local_stages("local", K, model, batches, 10, heads=heads, lr=0.0, momentum=0.0)
    run_sim(stages, schedule, batches)
    for k in range(K - 1):
        assert len(seen[k]) == 10
        for b, (ids, labels, input_ids) in enumerate(seen[k]):
            assert torch.equal(ids, torch.full((bs,), b)) and torch.equal(input_ids, ids)
            assert torch.equal(labels, ids % C)


def test_method_registry_and_heads():
    assert get_method("dgl").head == "dgl" and get_method("infopro").head == "infopro"
    assert get_method("local").head == "linear" and get_method("local", head="dgl").head == "dgl"
    assert all(get_method(n).family == "local" for n in ("dgl", "infopro", "local"))
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        get_method("local", head="mlp")
    with pytest.raises(ValueError, match="takes no option 'head'"):
        get_method("infopro", head="linear")


def test_a_registered_head_of_your_own_trains_through_build(monkeypatch):
    from torchdecoupled.heads import HEADS
    built = []

    def factory(feature_shape, num_classes, input_shape, stage=0, num_stages=2):
        built.append((stage, feature_shape))
        return make_head("linear", feature_shape, num_classes, input_shape, stage=stage, num_stages=num_stages)
    monkeypatch.setitem(HEADS, "mine", factory)
    s = train(RunConfig(method="local", method_opts={"head": "mine"}, stages=3, dataset="mnist1d", epochs=1,
                        batch_size=500, progress=False))
    assert [k for k, _ in built] == [0, 1] and s["train_loss"] == s["train_loss"]


@pytest.mark.parametrize("name", ["dgl", "infopro"])
def test_trains_end_to_end_on_mnist1d(name):
    s = train(RunConfig(method=name, stages=3, dataset="mnist1d", epochs=1, progress=False))
    assert 0.1 < s["test_acc"] <= 1.0 and s["train_loss"] == s["train_loss"]
    assert len(s["peak_stored_bytes"]) == 3
