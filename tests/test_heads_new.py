"""AugLocal's head (sampled layers and pyramid depths against a hand-drawn table, fresh copies, gradients,
FLOPs), the auglocal method on both engines, the language-model heads and the 1D ResNet."""
import copy

import pytest
import torch
from torch import nn

from dist_cases import sim_summary, tiny_cfg
from torchdecoupled import Pipeline
from torchdecoupled.config import RunConfig
from torchdecoupled.heads import HEADS, make_head, stage_head
from torchdecoupled.heads.auglocal import pyramid_depths, sample_layers
from torchdecoupled.methods import get_method
from torchdecoupled.models import build_model
from torchdecoupled.partition import split
from torchdecoupled.run import train

# resnet1d_32: 17 children (0 stem, 1..15 blocks, 16 the classifier), so n = 16 candidate layers.
# Stage k ends at layer l_k; (d_k, sampled layers) per head, by hand from the reference's formulas
#   d_k = max(1, round(3 (1 - 0.5 k / (K-2)) + 0.5 k / (K-2)))    round half to even (Python's round)
#   layers = l+1..15 if d_k >= 15 - l, else round(l + (15 - l) / d_k * i) for i = 1..d_k
CUTS = {4: [4, 8, 12], 8: [2, 4, 6, 8, 10, 12, 14], 16: list(range(1, 16))}
TABLE = {
    4: [(3, (7, 11, 15)), (2, (11, 15)), (2, (13, 15))],                      # l = 3, 7, 11; d_1 = round(2.5)
    8: [(3, (6, 10, 15)), (3, (7, 11, 15)), (3, (8, 12, 15)), (2, (11, 15)),  # l = 1, 3, ..., 13
        (2, (12, 15)), (2, (13, 15)), (2, (14, 15))],
    16: [(3, (5, 10, 15)), (3, (6, 10, 15)), (3, (6, 11, 15)), (3, (7, 11, 15)), (3, (8, 11, 15)),
         (3, (8, 12, 15)), (3, (9, 12, 15)), (2, (11, 15)), (2, (12, 15)),    # l = k; k = 8: round(11.5) = 12
         (2, (12, 15)), (2, (12, 15)), (2, (13, 15)), (2, (14, 15)),          # k = 10: round(12.5) = 12
         (2, (14, 15)), (2, (15,))],                                          # k = 12: round(13.5) = 14
}


def resnet1d_stages(K, seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet1d_32", 10, (1, 40))
    return model, split(model, K, boundaries=CUTS[K])


X = torch.randn(8, 1, 40, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("K", [4, 8, 16])
def test_sampled_layers_and_depths_equal_the_hand_table(K):
    _, stages = resnet1d_stages(K)
    heads = [stage_head("auglocal", stages, k, X, 10) for k in range(K - 1)]
    assert [(h.depth, h.layers) for h in heads] == TABLE[K]
    assert pyramid_depths(3, K) == [d for d, _ in TABLE[K]]


def test_pyramid_and_sampling_edge_cases():
    assert pyramid_depths(3, 2) == [3] and pyramid_depths(5, 3, 0.0) == [5, 5]
    assert pyramid_depths(1, 6) == [1] * 5 and pyramid_depths(6, 4, 1.0) == [6, round(3.5), 1]
    assert sample_layers(14, 16, 3) == [15] and sample_layers(15, 16, 3) == []


def test_copies_are_fresh_and_shapes_are_adapted():
    model, stages = resnet1d_stages(16)
    head = stage_head("auglocal", stages, 0, X, 10)  # copies 5, 10 (a 32-wide block) and 15 (64 wide)
    mine = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in mine for p in head.parameters())
    copies = [m for m in head.net if type(m).__name__ == "BasicBlock1d"]
    assert len(copies) == 3
    for copied, j in zip(copies, head.layers):
        assert not torch.equal(copied.conv1.weight, model[j].conv1.weight)
        assert copied.conv1.weight.shape == model[j].conv1.weight.shape
    # 16 wide at length 40 after the stem and block 5; block 10 takes (32, 20): pool + 1x1 conv + BN first
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["BasicBlock1d", "AdaptiveAvgPool1d", "Conv1d", "BatchNorm1d", "BasicBlock1d",
                     "AdaptiveAvgPool1d", "Conv1d", "BatchNorm1d", "BasicBlock1d", "GlobalPool", "Linear"]


def test_loss_is_finite_and_gradients_reach_only_h_and_the_head():
    model, stages = resnet1d_stages(4)
    head = stage_head("auglocal", stages, 1, X, 10)
    with torch.no_grad():
        h = stages[1](stages[0](X))
    h.requires_grad_(True)
    y = torch.arange(8) % 10
    loss = head.loss(h, y, X)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_depth_one_ends_with_batchnorm_and_flops_are_counted():
    _, stages = resnet1d_stages(4)
    head = stage_head("auglocal", stages, 2, X, 10)
    assert not isinstance(head.net[-2], nn.BatchNorm1d)  # d_k = 2
    one = make_head("auglocal", (64, 10), 10, (1, 40), stage=2, num_stages=4, modules=stages, depth=1)
    assert one.depth == 1 and isinstance(one.net[-2], nn.BatchNorm1d)
    # the last head of K = 16 samples nothing: pool + Linear(64, 10); forward 2*64*10, backward 2 x that
    torch.manual_seed(0)
    model = build_model("resnet1d_32", 10, (1, 40))
    stages = split(model, 16, boundaries=list(range(2, 17)))  # the last stage is the classifier alone
    bare = stage_head("auglocal", stages, 14, X, 10)
    assert bare.layers == () and [type(m) for m in bare.net] == [type(head.net[-2]), nn.Linear]
    assert bare.flops_per_sample() == 6 * 64 * 10


def test_auglocal_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="builds its auxiliary network from the later stages"):
        make_head("auglocal", (16, 40), 10, (1, 40), stage=0, num_stages=4)
    _, stages = resnet1d_stages(4)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        make_head("auglocal", (16, 40), 10, (1, 40), stage=0, num_stages=4, modules=stages, depth=0)
    with pytest.raises(ValueError, match="pyramid coefficient"):
        make_head("auglocal", (16, 40), 10, (1, 40), stage=0, num_stages=4, modules=stages, pyramid=2)
    with pytest.raises(ValueError, match="unknown method"):
        get_method("augloc")


def test_auglocal_trains_on_mnist1d_k4():
    cfg = RunConfig(method="auglocal", stages=4, dataset="mnist1d", model="resnet1d_20", epochs=1, batch_size=400,
                    lr=0.05, partition="uniform", progress=False, seed=0)
    s = train(cfg)
    assert s["method"].startswith("auglocal") and len(s["boundaries"]) == 3
    assert torch.isfinite(torch.tensor(s["train_loss"])) and s["test_acc"] > 0.15  # chance: 0.10


def test_dist_equals_the_simulator_k2():
    cfg = tiny_cfg("auglocal", 2, model="resnet1d_20", model_opts={}, epochs=1, batch_size=800)
    got, want = train(cfg), sim_summary(cfg)
    assert got["params_sha256"] == want["params_sha256"]
    assert got["test_loss"] == want["test_loss"] and got["train_loss"] == want["train_loss"]


# ---- language-model heads -----------------------------------------------------------------------
V, T, W = 11, 5, 8


def test_lm_loss_equals_a_hand_cross_entropy():
    torch.manual_seed(0)
    head = make_head("lm", (T, W), V, (T,))
    h = torch.randn(3, T, W, requires_grad=True)
    y = torch.randint(0, V, (3, T))
    z = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    logits = (z * head.ln.weight + head.ln.bias) @ head.out.weight.T + head.out.bias
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    want = -logp.gather(-1, y.unsqueeze(-1)).mean()
    assert torch.allclose(head.loss(h, y, None), want, atol=1e-6)
    with pytest.raises(ValueError, match="next-token targets of shape"):
        head.loss(h, y[:, 0], None)
    with pytest.raises(ValueError, match=r"token features of shape \(T, width\)"):
        make_head("lm", (3, 8, 8), V, (3, 8, 8))


def token_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(V, W), nn.Sequential(nn.Linear(W, W), nn.GELU()),
                         nn.Sequential(nn.LayerNorm(W), nn.Linear(W, V)))


def lm_criterion(logits, y):
    return nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))


def test_lm_frozen_is_a_fixed_copy_of_the_last_stage_head():
    model = token_model()
    g = torch.Generator().manual_seed(0)
    xs = torch.randint(0, V, (24, T), generator=g)
    data = [(xs[i:i + 8], torch.roll(xs[i:i + 8], -1, 1)) for i in range(0, 24, 8)]
    pipe = Pipeline(model, "local", 2, boundaries=[2], head="lm_frozen", num_classes=V, sample=xs[:2],
                    criterion=lm_criterion, optimizer=lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9))
    head, ln, lin = pipe.heads[0], model[2][0], model[2][1]
    start = {k: v.clone() for k, v in head.state_dict().items()}
    assert torch.equal(head.weight, lin.weight) and torch.equal(head.ln_weight, ln.weight)
    assert list(head.parameters()) == [] and not any(b.requires_grad for b in head.buffers())
    embed = model[0].weight.detach().clone()
    last = lin.weight.detach().clone()
    pipe.fit(data, epochs=3, progress=False)
    assert all(torch.equal(start[k], v) for k, v in head.state_dict().items())  # never changes
    assert not torch.equal(lin.weight, last) and not torch.equal(model[0].weight, embed)  # both stages learn
    held = {id(p) for group in pipe.stages[0].optimizer.param_groups for p in group["params"]}
    assert not any(id(b) in held for b in head.buffers()) and all(b.grad is None for b in head.buffers())


def test_lm_frozen_needs_a_layernorm_and_linear_that_fit():
    model = token_model()
    stages = split(model, 2, boundaries=[2])
    head = make_head("lm_frozen", (T, W), V, (T,), stage=0, num_stages=2, modules=stages)
    h = torch.randn(2, T, W, requires_grad=True)
    y = torch.randint(0, V, (2, T))
    want = lm_criterion(model[2](h), y)  # the last stage's own head, same weights at build time
    assert torch.allclose(head.loss(h, y, None), want)
    gpt = build_model("gpt", V, (T,), layers=2, width=W, heads=2)  # Embed, Block, Block, Head(ln, linear)
    gstages = split(gpt, 2, boundaries=[2])
    ghead = make_head("lm_frozen", (T, W), V, (T,), stage=0, num_stages=2, modules=gstages)
    assert torch.equal(ghead.weight, gpt[-1].linear.weight) and torch.equal(ghead.ln_weight, gpt[-1].ln.weight)
    assert torch.allclose(ghead.loss(h, y, None), lm_criterion(gpt[-1](h), y))
    with pytest.raises(ValueError, match="has no nn.LayerNorm"):
        make_head("lm_frozen", (T, W), V, (T,), modules=[stages[0], nn.Sequential(nn.Linear(W, V))])
    with pytest.raises(ValueError, match="must match"):
        make_head("lm_frozen", (T, W), V + 1, (T,), modules=stages)


def test_registry_names():
    assert {"auglocal", "lm", "lm_frozen"} <= set(HEADS)
    m = get_method("auglocal")
    assert m.family == "local" and m.head == "auglocal" and "2402.17318" in m.paper


# ---- resnet1d ----------------------------------------------------------------------------------------
def expected_params(n, c=16, classes=10):
    """By hand: stem conv + BN, per group n blocks of two conv3 + two BN, a projection where width changes."""
    total = 3 * c + 2 * c
    for c_in, c_out in ((c, c), (c, 2 * c), (2 * c, 4 * c)):
        for i in range(n):
            a = c_in if i == 0 else c_out
            total += 3 * a * c_out + 3 * c_out * c_out + 4 * c_out
            total += (a * c_out + 2 * c_out) if a != c_out else 0
    return total + 4 * c * classes + classes


@pytest.mark.parametrize("name,n,children", [("resnet1d_20", 3, 11), ("resnet1d_32", 5, 17), ("resnet1d", 5, 17)])
def test_resnet1d_blocks_and_parameters(name, n, children):
    torch.manual_seed(0)
    model = build_model(name, 10, (1, 40))
    assert len(model) == children == 3 * n + 2
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_params(n)  # resnet1d_20: 93,914; resnet1d_32: 159,322
    assert model(torch.randn(3, 1, 40)).shape == (3, 10) and model(torch.randn(3, 40)).shape == (3, 10)


def test_resnet1d_splits_into_16_stages_with_the_expected_shapes():
    torch.manual_seed(0)
    model = build_model("resnet1d_32", 10, (1, 40))
    assert len(split(model, 16, balance="uniform")) == len(split(model, 16)) == 16
    stages = split(model, 16, boundaries=CUTS[16])
    x, shapes = torch.randn(4, 1, 40), []
    for s in stages:
        x = s(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 40)] * 6 + [(32, 20)] * 5 + [(64, 10)] * 4 + [(10,)]
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        build_model("resnet1d", 10, (1, 40), depth=21)
    with pytest.raises(ValueError, match="needs in_shape"):
        build_model("resnet1d", 10, (3, 8, 8))
    block = copy.deepcopy(model[6])
    xin = torch.randn(2, 16, 40, requires_grad=True)
    before = xin.detach().clone()
    block(xin).sum().backward()
    assert torch.equal(xin.detach(), before)  # a block never modifies its input
