"""Tests for torchdecoupled.models: shapes, sizes, determinism, block structure, a quick training run."""

import pytest
import torch
from torch import nn

from torchdecoupled.models import MODELS, build_model
from torchdecoupled.models.resnet import ShortcutA

SLOW_FORWARD = {"resnet1202", "wrn28_10", "wrn"}  # build only; "wrn" defaults to WRN-28-10
SMALL = {"wrn": {"depth": 10, "width": 1}, "resnet": {"depth": 8}}
TOKEN_MODELS = {"gpt", "gpt_mini", "gpt_small"}  # int64 tokens in, (B, T, vocab) out: tests/test_gpt.py


def shape_for(name):
    signal = name.startswith(("resnet1d", "revnet1d"))  # 1D models take MNIST-1D's (1, 40)
    return {"cnn1d": (1, 40), "cnn1d_bn": (1, 40), "cnn2d": (1, 8, 8)}.get(name, (1, 40) if signal else (3, 32, 32))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(set(MODELS) - SLOW_FORWARD - TOKEN_MODELS | set(SMALL)))
def test_output_shape_and_blocks(name):
    torch.manual_seed(0)
    in_shape = shape_for(name)
    model = build_model(name, 7, in_shape, **SMALL.get(name, {}))
    assert isinstance(model, nn.Sequential) and len(model) >= 3
    assert not any(isinstance(child, nn.Flatten) for child in model)
    assert model(torch.randn(2, *in_shape)).shape == (2, 7)


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d", "resnet20", "wrn"])
def test_blocks_never_modify_their_input(name):
    # the pipeline feeds each block a detached leaf that requires grad; in-place ops on it would fail or corrupt
    torch.manual_seed(0)
    in_shape = shape_for(name)
    model = build_model(name, 10, in_shape, **SMALL.get(name, {}))
    h = torch.randn(4, *in_shape)
    for block in model:
        x = h.detach().requires_grad_()
        before, version = x.detach().clone(), x._version
        h = block(x)
        h.sum().backward()
        assert x._version == version and torch.equal(x.detach(), before)
        assert x.grad is not None and x.grad.shape == x.shape


def test_named_variant_rejects_its_fixed_argument():
    with pytest.raises(ValueError, match=r"fixes depth=56.*'resnet'"):
        build_model("resnet56", 10, (3, 32, 32), depth=20)


@pytest.mark.parametrize(
    "name, expected",
    [("resnet20", 0.27e6), ("resnet56", 0.85e6), ("resnet110", 1.7e6), ("resnet1202", 19.4e6), ("wrn28_10", 36.5e6)],
)
def test_parameter_counts_match_the_papers(name, expected):
    model = build_model(name, 10, (3, 32, 32))
    assert abs(n_params(model) - expected) / expected < 0.02
    if name.startswith("resnet"):
        depth = int(name[len("resnet") :])
        assert len(model) == 2 + 3 * (depth - 2) // 6  # stem, one child per BasicBlock, head


def test_cnn1d_is_greydanus_convbase():
    model = build_model("cnn1d", 10, (40,))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (1, 25, 5, 2, 1), (25, 25, 3, 2, 1), (25, 25, 3, 2, 1)
    ]
    assert model[-1][-1].in_features == 125
    x = torch.randn(5, 40)
    assert torch.equal(model(x), model(x.unsqueeze(1)))  # (N, 40) and (N, 1, 40) both accepted


def test_option_a_shortcut_is_parameter_free_zero_padding():
    shortcut = ShortcutA(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4) and not list(shortcut.parameters())
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_wrn_dropout_and_widths():
    model = build_model("wrn", 10, (3, 32, 32), depth=16, width=2, dropout=0.3)
    assert len(model) == 2 + 3 * 2
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    assert model[-1].linear.in_features == 64 * 2


def test_same_seed_same_weights_different_seed_different():
    def weights(seed, name):
        torch.manual_seed(seed)
        return [p.detach().clone() for p in build_model(name, 10, shape_for(name)).parameters()]

    for name in ("mlp", "cnn2d", "resnet20"):
        a, b, c = weights(1, name), weights(1, name), weights(2, name)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_mlp_hidden_sizes_and_any_shape():
    model = build_model("mlp", 3, (2, 5, 7), hidden=(16, 8, 4))
    assert len(model) == 4 and [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [16, 8, 4, 3]
    assert model(torch.randn(2, 2, 5, 7)).shape == (2, 3)


def test_errors_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'resnet21' \(valid: cnn1d, cnn1d_bn, cnn2d, gpt, gpt_mini, gpt_small, mlp, resnet, resnet110"):
        build_model("resnet21", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="6n \\+ 2.*got 21"):
        build_model("resnet", 10, (3, 32, 32), depth=21)
    with pytest.raises(ValueError, match="6n \\+ 4.*got 27"):
        build_model("wrn", 10, (3, 32, 32), depth=27)
    with pytest.raises(ValueError, match="in_shape"):
        build_model("cnn2d", 10, (64,))


def test_cnn2d_learns_digits_quickly():
    from torchdecoupled.data import Batches, load_dataset

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("cnn2d", data.num_classes, data.in_shape)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = Batches(data.train_x, data.train_y, 64, seed=0)
    for b in range(90):
        x, y = batches.get(b)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
    assert accuracy > 0.90
