"""Tests for torchdecoupled.models.gpt: a plain-PyTorch oracle forward, causality, sizes by formula,
determinism, dropout, partitioning by every balance (stages in sequence equal the whole model), training."""
import math

import pytest
import torch
import torch.nn.functional as F

from torchdecoupled.compensate import flop_boundaries
from torchdecoupled.data.text import load_text
from torchdecoupled.models import MODELS, build_model, lm_loss
from torchdecoupled.models.gpt import Block, Embed, Head, gpt
from torchdecoupled.partition import cut_points, split

V, T = 50, 16  # a small vocabulary and context for the fast tests


def small(**kwargs):
    torch.manual_seed(0)
    return gpt(V, (T,), **{"layers": 2, "width": 32, "heads": 4, **kwargs})


def tokens(b=3, t=T, vocab=V, seed=1):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def formula_params(vocab, context, layers, width, ratio=4):
    # token + position embeddings; per block two LayerNorms (4C), qkv (3C^2 + 3C), proj (C^2 + C),
    # fc (rC^2 + rC), fc proj (rC^2 + C); final LayerNorm (2C) and the output Linear (CV + V)
    block = 4 * width + 3 * width * width + 3 * width + width * width + width + 2 * ratio * width * width \
        + ratio * width + width
    return vocab * width + context * width + layers * block + 2 * width + width * vocab + vocab


def reference_forward(model, idx):
    """The same network written out in plain tensor ops: explicit masked softmax attention (Vaswani et al.
    Eq. 1), F.layer_norm, tanh-free exact GELU via erf."""
    embed, *blocks, head = list(model)
    x = embed.tokens.weight[idx] + embed.positions.weight[: idx.shape[1]]
    t = idx.shape[1]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for blk in blocks:
        h = F.layer_norm(x, (x.shape[-1],), blk.ln1.weight, blk.ln1.bias)
        q, k, v = (h @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).chunk(3, dim=-1)
        heads = blk.attn.heads
        split_heads = lambda z: z.reshape(z.shape[0], t, heads, -1).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = split_heads(q), split_heads(k), split_heads(v)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        att = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
        att = att.permute(0, 2, 1, 3).reshape(x.shape)
        x = x + att @ blk.attn.proj.weight.T + blk.attn.proj.bias
        h = F.layer_norm(x, (x.shape[-1],), blk.ln2.weight, blk.ln2.bias)
        h = h @ blk.mlp.fc.weight.T + blk.mlp.fc.bias
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ blk.mlp.proj.weight.T + blk.mlp.proj.bias
    x = F.layer_norm(x, (x.shape[-1],), head.ln.weight, head.ln.bias)
    return x @ head.linear.weight.T + head.linear.bias


def test_children_shapes_and_the_oracle_forward():
    model = small().double()
    assert [type(c) for c in model] == [Embed, Block, Block, Head]
    for t in (T, 5, 1):
        idx = tokens(t=t)
        out = model(idx)
        assert out.shape == (3, t, V) and out.dtype == torch.float64
        assert model[0](idx).shape == (3, t, 32)
        assert torch.allclose(out, reference_forward(model, idx), atol=1e-10, rtol=0)


def test_causal_a_token_changes_only_its_own_and_later_logits():
    model = small().eval()
    idx = tokens(b=1)
    base = model(idx)
    for j in range(T):
        changed = idx.clone()
        changed[0, j] = (changed[0, j] + 1) % V
        out = model(changed)
        assert torch.equal(out[:, :j], base[:, :j]), f"position {j} leaked backwards"
        diff = (out[:, j:] - base[:, j:]).abs().amax(-1)
        assert bool((diff > 1e-6).all()), f"a change at {j} did not reach every later position"


def test_blocks_never_modify_their_input():
    model = small()
    h = tokens()
    for k, block in enumerate(model):
        x = h.detach().requires_grad_(k > 0)
        before, version = x.detach().clone(), x._version
        h = block(x)
        h.sum().backward()
        assert x._version == version and torch.equal(x.detach(), before)
        assert k == 0 or x.grad.shape == x.shape


def test_gpt_mini_and_gpt_small_sizes_match_the_formula():
    mini = build_model("gpt_mini", 256, (64,))
    assert len(mini) >= 8
    assert n_params(mini) == formula_params(256, 64, 6, 128)
    assert 0.8e6 <= n_params(mini) <= 1.3e6
    with torch.device("meta"):  # no memory, no time: only the shapes
        gpt2 = build_model("gpt_small", 256, (1024,))
    assert len(gpt2) == 14 and gpt2[1].attn.heads == 12
    assert n_params(gpt2) == formula_params(256, 1024, 12, 768)
    assert {"gpt", "gpt_mini", "gpt_small"} <= set(MODELS)


def test_initialisation_is_deterministic_and_gpt2_scaled():
    a, b = small(), small()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    idx = tokens()
    assert torch.equal(a(idx), b(idx))
    c = gpt(V, (T,), layers=2, width=32, heads=4)  # another draw of the global generator
    assert not torch.equal(a[1].attn.qkv.weight, c[1].attn.qkv.weight)
    big = build_model("gpt", 256, (64,), layers=8, width=256)
    std = big[1].mlp.proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(16)) < 0.1 * 0.02 / math.sqrt(16)  # GPT-2: 1/sqrt(N), N = 2 layers
    assert abs(big[1].mlp.fc.weight.std().item() - 0.02) < 0.002
    assert all(float(blk.attn.qkv.bias.detach().abs().max()) == 0 for blk in big[1:-1])


def test_dropout_acts_in_training_only():
    model = small(dropout=0.3)
    idx = tokens()
    model.eval()
    e1, e2 = model(idx), model(idx)
    assert torch.equal(e1, e2)
    model.train()
    torch.manual_seed(5)
    t1 = model(idx)
    torch.manual_seed(5)
    t2 = model(idx)
    t3 = model(idx)
    assert torch.equal(t1, t2) and not torch.allclose(t1, e1) and not torch.allclose(t1, t3)
    assert torch.equal(small()(idx), small(dropout=0.0).train()(idx))


@pytest.mark.parametrize("balance", ["params", "uniform", "time", "flops"])
def test_every_split_runs_as_the_whole_model(balance):
    torch.manual_seed(0)
    model = build_model("gpt_mini", 256, (64,)).eval()
    idx = tokens(b=2, t=64, vocab=256)
    whole = model(idx)
    for k in range(1, 9):
        if balance == "flops":
            recompute = k % 2 == 0  # both cost models of the batch compensation
            stages = split(model, k, boundaries=flop_boundaries(model, k, idx[:2], recompute=recompute))
        else:
            stages = split(model, k, balance=balance, sample=idx, repeats=1)
        assert len(stages) == k and sum(len(s) for s in stages) == len(model)
        h = idx
        for stage in stages:
            h = stage(h.detach())
        assert torch.equal(h, whole), f"K={k} balance={balance}"
    assert cut_points(stages) == list(range(1, 8))  # K = 8: one child per stage


def test_stagewise_backward_equals_whole_backward():
    model = small().double()
    idx, target = tokens(), tokens(seed=2)
    lm_loss(model(idx), target).backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    stages = split(model, 3, balance="uniform")
    inputs, h = [], idx
    for k, stage in enumerate(stages):  # forward with detached boundaries, as a pipeline runs it
        x = h.detach().requires_grad_(k > 0)
        inputs.append(x)
        h = stage(x)
    grad = torch.autograd.grad(lm_loss(h, target), [inputs[-1], *stages[-1].parameters()])
    for p, g in zip(stages[-1].parameters(), grad[1:]):
        p.grad = g
    g_in = grad[0]
    for k in (1, 0):
        out = stages[k](inputs[k])
        wrt = ([inputs[k]] if k else []) + list(stages[k].parameters())
        got = torch.autograd.grad(out, wrt, g_in)
        for p, g in zip(stages[k].parameters(), got[1 if k else 0:]):
            p.grad = g
        g_in = got[0] if k else None
    for p, g in zip(model.parameters(), whole):
        assert torch.allclose(p.grad, g, atol=1e-12, rtol=0)


def test_lm_loss_is_the_mean_token_cross_entropy():
    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    by_hand = -sum(logits[b, t].log_softmax(-1)[target[b, t]] for b in range(2) for t in range(5)) / 10
    assert torch.allclose(lm_loss(logits, target), by_hand, atol=1e-12)
    with pytest.raises(ValueError, match=r"targets.shape \+ \(vocab,\).*\(2, 5, 7\).*\(2, 4\)"):
        lm_loss(logits, target[:, :4])


def test_an_adamw_step_on_text_reduces_the_loss():
    data = load_text(context=32)
    x, y = data.train_x[:16], data.train_y[:16]
    torch.manual_seed(0)
    model = build_model("gpt", 256, (32,), layers=2, width=64, heads=4)
    first = lm_loss(model(x), y)
    assert abs(first.item() - math.log(256)) < 0.05  # N(0, 0.02) weights: near-uniform predictions
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):
        opt.zero_grad()
        lm_loss(model(x), y).backward()
        opt.step()
    assert lm_loss(model(x), y).item() < first.item() - 0.3


@pytest.mark.parametrize("kwargs, match", [
    ({"width": 30, "heads": 4}, r"width 30 is not divisible by heads 4.*heads=3"),
    ({"layers": 0}, r"layers must be an integer >= 1, got 0"),
    ({"width": 0}, r"width must be an integer >= 1, got 0"),
    ({"heads": 2.0}, r"heads must be an integer >= 1, got 2.0"),
    ({"mlp_ratio": 0}, r"mlp_ratio must be an integer >= 1"),
    ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\), got 1.0"),
    ({"dropout": -0.1}, r"dropout must be a probability"),
])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpt(V, (T,), **kwargs)


def test_bad_inputs_and_shapes_are_refused():
    with pytest.raises(ValueError, match=r"in_shape \(context,\).*\(1, 16\)"):
        gpt(V, (1, T))
    with pytest.raises(ValueError, match=r"gpt_mini.*fixes layers=6.*'gpt'"):
        build_model("gpt_mini", 256, (64,), layers=2)
    model = small()
    with pytest.raises(TypeError, match=r"integer token ids.*torch.float32.*uncast"):
        model(tokens().float())
    with pytest.raises(ValueError, match=r"17 tokens is longer than the model's context 16.*in_shape=\(17,\)"):
        model(tokens(t=T + 1))
