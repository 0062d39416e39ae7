"""substitute.Slots: a module run with other tensors in place of its own equals torch.func.functional_call,
tied weights included, and gets its own tensors back (also after an error)."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from torchdecoupled.substitute import Slots


def tied():
    torch.manual_seed(0)
    emb, out = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
    out.weight = emb.weight  # one tensor, two names
    return nn.Sequential(emb, nn.LayerNorm(4), out)


def test_substituted_equals_functional_call_with_tied_weights():
    m, x = tied(), torch.tensor([[1, 2, 3]])
    names = [n for n, _ in m.named_parameters()]
    assert "2.weight" not in names  # the tie is known by its first name
    other = {n: torch.randn_like(p) for n, p in m.named_parameters()}
    with Slots(m).substituted(other):
        got = m(x)
        assert m[2].weight is other["0.weight"]  # both places of the tied weight
    assert torch.equal(got, functional_call(m, other, (x,)))
    assert isinstance(m[2].weight, nn.Parameter) and m[2].weight is m[0].weight


def test_buffers_move_on_the_copies_only():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    before = m[1].running_mean.clone()
    copies = {n: t.clone() for n, t in m.named_buffers()}
    with Slots(m).substituted(copies):
        m(torch.randn(8, 3))
    assert torch.equal(m[1].running_mean, before) and not torch.equal(copies["1.running_mean"], before)
    assert copies["1.num_batches_tracked"] == 1


def test_an_error_inside_restores_the_module_and_an_unknown_name_is_named():
    m = tied()
    own = dict(m.named_parameters())
    with pytest.raises(RuntimeError, match="boom"):
        with Slots(m).substituted({"1.weight": torch.zeros(4)}):
            raise RuntimeError("boom")
    assert all(p is own[n] for n, p in m.named_parameters())
    with pytest.raises(KeyError, match="no parameter or buffer named 'nope'"):
        with Slots(m).substituted({"nope": torch.zeros(1)}):
            pass
    assert all(p is own[n] for n, p in m.named_parameters())
