"""Tests for torchdecoupled.partition: golden tables, brute-force oracle, errors, same objects."""
import itertools
import random
import time

import pytest
import torch
from torch import nn

from torchdecoupled import partition
from torchdecoupled.partition import balance_costs, describe, layer_costs, split, stage_costs


def brute_force(costs, num_stages, recompute=False, trainable=None):
    """Every contiguous partition (where each stage holds a trainable layer, if flags are given), ranked by
    (max stage cost, sum of squares, boundaries)."""
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), num_stages - 1):
        edges = [0, *cuts, n]
        if trainable is not None and not all(any(trainable[a:b]) for a, b in zip(edges, edges[1:])):
            continue
        stages = []
        for k, (a, b) in enumerate(zip(edges, edges[1:])):
            last = k == num_stages - 1
            if isinstance(costs[0], tuple):
                stages.append(sum((f if last else 2 * f) + g for f, g in costs[a:b]))
            else:
                stages.append(sum(costs[a:b]))
        key = (max(stages), sum(c * c for c in stages), list(cuts))
        best = key if best is None or key < best else best
    return best


# --- the DP against golden tables and the brute-force oracle -----------------------------------

@pytest.mark.parametrize("costs, k, expected", [
    ([1, 1, 1, 1], 2, [2]),
    ([4, 1, 1, 1, 1], 2, [1]),
    ([1, 1, 1, 1, 4], 2, [4]),
    ([1, 2, 3, 4, 5], 1, []),
    ([1, 2, 3, 4, 5], 5, [1, 2, 3, 4]),
    ([1, 2, 3, 4, 5], 2, [3]),        # 6 | 9 beats 10 | 5
    ([2, 2, 2, 2, 2, 2], 3, [2, 4]),
    ([1] * 10, 3, [3, 6]),            # 3/3/4: sum of squares breaks the tie, then earliest cuts
    ([1, 1, 1], 2, [1]),              # 1|2 and 2|1 tie exactly: earliest cut
    ([5, 0, 0, 5], 2, [1]),           # zero-cost layers go to the later stage
    ([0.5, 0.25, 0.25], 2, [1]),
])
def test_balance_costs_golden(costs, k, expected):
    assert balance_costs(costs, k) == expected


@pytest.mark.parametrize("recompute", [False, True])
def test_balance_costs_matches_brute_force(recompute):
    rng = random.Random(1234)
    for _ in range(150):
        n = rng.randint(1, 8)
        k = rng.randint(1, n)
        if recompute:
            costs = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(n)]
        else:
            costs = [rng.randint(0, 9) for _ in range(n)]
        cuts = balance_costs(costs, k, recompute=recompute)
        worst, squares, best_cuts = brute_force(costs, k, recompute)
        assert max(stage_costs(costs, cuts, recompute)) == worst, (costs, k)
        assert cuts == best_cuts, (costs, k)


def test_balance_costs_with_trainable_flags_matches_brute_force():
    rng = random.Random(4321)
    for _ in range(200):
        n = rng.randint(1, 8)
        trainable = [rng.random() < 0.6 for _ in range(n)]
        if not any(trainable):
            continue
        k = rng.randint(1, sum(trainable))
        costs = [rng.randint(0, 9) if t else rng.choice([0, 0, 3]) for t in trainable]
        cuts = balance_costs(costs, k, trainable=trainable)
        edges = [0, *cuts, n]
        assert all(any(trainable[a:b]) for a, b in zip(edges, edges[1:])), (costs, trainable, k)
        assert cuts == brute_force(costs, k, trainable=trainable)[2], (costs, trainable, k)


def test_all_flags_set_changes_nothing():
    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(1, 8)
        k = rng.randint(1, n)
        costs = [rng.randint(0, 9) for _ in range(n)]
        assert balance_costs(costs, k, trainable=[True] * n) == balance_costs(costs, k)


def test_pairs_without_recompute_sum_forward_and_backward():
    costs = [(1, 3), (1, 1), (1, 1), (1, 1)]  # per layer 4, 2, 2, 2
    assert balance_costs(costs, 2) == balance_costs([4, 2, 2, 2], 2) == [1]


def test_recompute_gives_the_last_stage_more_layers():
    # Eight layers of F = 1, B = 2. Without recompute each costs 3: 4 | 4 layers, 12 vs 12.
    # With recompute stage 0 pays F + F + B = 4 per layer, the last stage 3 per layer:
    #   cut 3 -> 12 | 15 (max 15), cut 4 -> 16 | 12 (max 16), cut 2 -> 8 | 18. So cut at 3.
    costs = [(1, 2)] * 8
    assert balance_costs(costs, 2) == [4]
    assert balance_costs(costs, 2, recompute=True) == [3]
    assert stage_costs(costs, [3], recompute=True) == [12, 15]
    # The recompute-aware cut is better per tick than the naive one, under the true cost.
    assert max(stage_costs(costs, [3], recompute=True)) < max(stage_costs(costs, [4], recompute=True))


def test_recompute_three_stages():
    # Nine layers of F = 1, B = 1: 3 per layer in stages 0, 1, 2 per layer in the last stage.
    # 2 | 2 | 5 -> 6, 6, 10; 2 | 3 | 4 -> 6, 9, 8 (max 9); 3 | 3 | 3 -> 9, 9, 6 (max 9);
    # 9 is optimal; of 2|3|4, 3|2|4, 3|3|3 the sums of squares are 181, 181, 198 -> earliest: [2, 5].
    costs = [(1, 1)] * 9
    assert balance_costs(costs, 3) == [3, 6]
    assert balance_costs(costs, 3, recompute=True) == [2, 5]


def test_stage_costs():
    assert stage_costs([1, 2, 3, 4], [1, 3]) == [1, 5, 4]
    assert stage_costs([(1, 1), (2, 0), (1, 3)], [2], recompute=True) == [7, 4]


# --- split ---------------------------------------------------------------------------------------

def mlp(widths=(4, 8, 8, 8, 2)):
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


def test_split_keeps_the_same_module_objects_in_order():
    model = mlp()
    stages = split(model, 3, boundaries=[2, 5])
    assert [len(s) for s in stages] == [2, 3, 3]
    flat = [m for s in stages for m in s]
    assert len(flat) == len(model) and all(a is b for a, b in zip(flat, model))
    assert all(isinstance(s, nn.Sequential) for s in stages)
    # names and state_dict keys match the original model
    assert list(stages[1]._modules) == ["2", "3", "4"]
    assert set(stages[1].state_dict()) == {"2.weight", "2.bias", "4.weight", "4.bias"}
    # the stages compose to the model
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    y = x
    for s in stages:
        y = s(y)
    assert torch.equal(y, model(x))


def test_split_accepts_a_list_of_modules():
    layers = [nn.Linear(2, 2) for _ in range(4)]
    stages = split(layers, 2, balance="uniform")
    assert [list(s._modules) for s in stages] == [["0", "1"], ["2", "3"]]
    assert stages[1][0] is layers[2]


def test_split_params_balance():
    # params: Linear(1, 99) = 198, Linear(99, 1) = 100, three Linear(1, 1) = 2 each: 198 | 106
    layers = [nn.Linear(1, 99), nn.Linear(99, 1), nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)]
    stages = split(layers, 2, balance="params")
    assert [len(s) for s in stages] == [1, 4]
    assert split(layers, 1)[0][4] is layers[4]


def test_split_uniform():
    assert [len(s) for s in split(mlp(), 3, balance="uniform")] == [2, 3, 3]
    assert [len(s) for s in split(mlp(), 4, balance="uniform")] == [2] * 4


def test_split_time_uses_the_recompute_cost(monkeypatch):
    table = [(1.0, 2.0)] * 8
    monkeypatch.setattr(partition, "layer_costs", lambda layers, sample, repeats: table)
    layers = [nn.Linear(1, 1) for _ in range(8)]
    sample = torch.zeros(1)
    assert [len(s) for s in split(layers, 2, balance="time", sample=sample)] == [4, 4]
    assert [len(s) for s in split(layers, 2, balance="time", sample=sample,
                                  recompute=True)] == [3, 5]


def test_describe():
    stages = split(mlp(), 3, boundaries=[2, 5])
    lines = describe(stages).splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["stage", "layers", "count", "params"]
    assert lines[1].split() == ["0", "0-1", "2", "40"]
    assert lines[2].split() == ["1", "2-4", "3", "144"]
    assert lines[3].split() == ["2", "5-7", "3", "18"]


# --- parameter-free layers join a neighbour ------------------------------------------------------

def frozen(layer):
    for p in layer.parameters():
        p.requires_grad_(False)
    return layer


def test_uniform_never_makes_a_parameter_free_stage():
    layers = [nn.ReLU(), nn.Flatten(), nn.Linear(2, 2), nn.Linear(2, 2)]
    assert balance_costs([1] * 4, 2) == [2]  # unconstrained: ReLU, Flatten alone
    assert [len(s) for s in split(layers, 2, balance="uniform")] == [3, 1]


def test_params_balance_never_makes_a_stage_of_frozen_layers():
    # a frozen layer has parameters (it costs) but nothing to train: unconstrained it would be stage 0
    layers = [frozen(nn.Linear(10, 9)), nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)]
    assert balance_costs([99, 6, 6, 6], 3) == [1, 2]
    assert [len(s) for s in split(layers, 3, balance="params")] == [2, 1, 1]


def test_time_balance_never_isolates_a_slow_parameter_free_layer(monkeypatch):
    table = [(1.0, 0.0), (10.0, 0.0), (1.0, 0.0), (1.0, 0.0)]
    monkeypatch.setattr(partition, "layer_costs", lambda layers, sample, repeats: table)
    layers = [nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1), nn.Linear(1, 1)]
    assert balance_costs(table, 3) == [1, 2]  # unconstrained: the slow ReLU alone
    assert [len(s) for s in split(layers, 3, balance="time", sample=torch.zeros(1))] == [1, 2, 1]  # ties: earliest


def test_explicit_boundaries_with_a_parameter_free_stage_are_refused():
    with pytest.raises(ValueError) as info:
        split(mlp(), 3, boundaries=[1, 2])
    msg = str(info.value)
    for needle in ["stage 1", "1 (ReLU)", "without trainable parameters", "boundaries [2, 5]"]:
        assert needle in msg
    assert [len(s) for s in split(mlp(), 3, boundaries=[2, 5])] == [2, 3, 3]  # the suggestion is valid


def test_too_few_parameterised_layers():
    with pytest.raises(ValueError, match="at most 4 stages"):
        split(mlp(), 5)  # 8 layers, 4 of them Linear
    with pytest.raises(ValueError, match="at most 1 stages"):
        balance_costs([1, 1, 1], 2, trainable=[False, True, False])
    with pytest.raises(ValueError, match="nothing to train"):
        split([nn.ReLU(), frozen(nn.Linear(2, 2))], 1)


# --- errors name the offending value -------------------------------------------------------------

@pytest.mark.parametrize("kwargs, needles", [
    (dict(num_stages=0), ["0", ">= 1"]),
    (dict(num_stages=9), ["cannot cut 8 layers into 9 stages", "--stages <= 8"]),
    (dict(num_stages=2, balance="flops"), ["'flops'", "params, time, uniform"]),
    (dict(num_stages=2, balance="time"), ["sample"]),
    (dict(num_stages=3, boundaries=[4]), ["3 stages need 2 boundaries", "[4]"]),
    (dict(num_stages=3, boundaries=[5, 2]), ["[5, 2]", "increasing", "empty"]),
    (dict(num_stages=3, boundaries=[2, 2]), ["[2, 2]", "stage 1 empty"]),
    (dict(num_stages=3, boundaries=[2, 8]), ["boundary 8", "8 layers", "(0, 8)"]),
    (dict(num_stages=2, boundaries=[0]), ["boundary 0", "(0, 8)"]),
])
def test_split_errors(kwargs, needles):
    with pytest.raises(ValueError) as info:
        split(mlp(), **kwargs)
    for needle in needles:
        assert needle in str(info.value)


def test_type_errors():
    with pytest.raises(TypeError, match="Linear"):
        split(nn.Linear(2, 2), 1)
    with pytest.raises(TypeError, match="layer 1 is a str"):
        split([nn.ReLU(), "relu"], 1)
    with pytest.raises(TypeError, match="1.5"):
        split(mlp(), 2, boundaries=[1.5])


def test_balance_costs_errors():
    with pytest.raises(ValueError, match="cannot cut 2 layers into 3 stages"):
        balance_costs([1, 1], 3)
    with pytest.raises(ValueError, match="layer 0 costs 1"):
        balance_costs([1, 2], 2, recompute=True)
    with pytest.raises(ValueError, match="layer 1 is -1"):
        balance_costs([1, -1], 2)
    with pytest.raises(ValueError, match="layer 0 is nan"):
        balance_costs([float("nan"), 1], 2)
    with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
        balance_costs([(1, 2, 3)], 1)
    with pytest.raises(ValueError, match="repeats .* 0"):
        layer_costs([nn.ReLU()], torch.zeros(1), repeats=0)


# --- measured time -------------------------------------------------------------------------------

class Sleep(nn.Module):
    """Identity whose forward takes at least `seconds`."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x * 1.0


class _SlowBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(0.01)
        return grad


class SlowBackward(nn.Module):
    def forward(self, x):
        return _SlowBackward.apply(x)


def test_time_balance_isolates_a_heavy_layer():
    layers = [nn.Linear(8, 8) for _ in range(3)] + [Sleep(0.01)] + [nn.Linear(8, 8) for _ in range(3)]
    stages = split(layers, 3, balance="time", sample=torch.randn(4, 8), repeats=2)
    heavy = next(s for s in stages if any(m is layers[3] for m in s))
    assert len(heavy) <= 2
    assert sum(len(s) for s in stages) == 7


def test_layer_costs_times_forward_and_backward_separately():
    layers = [nn.Linear(8, 8), Sleep(0.01), SlowBackward(), nn.ReLU()]
    costs = layer_costs(layers, torch.randn(4, 8), repeats=2)
    assert len(costs) == 4
    assert costs[1][0] >= 0.01 and costs[1][1] < costs[1][0]  # heavy forward, light backward
    assert costs[2][1] >= 0.01 and costs[2][0] < costs[2][1]  # light forward, heavy backward
    assert all(f >= 0 and b >= 0 for f, b in costs)


def test_layer_costs_has_no_side_effects():
    bn = nn.BatchNorm1d(8)
    lin = nn.Linear(8, 8)
    drop = nn.Dropout(0.5)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    sample = torch.randn(4, 8)
    rng = torch.get_rng_state()
    layer_costs([lin, bn, drop], sample, repeats=1)
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())
    assert lin.weight.grad is None and bn.weight.grad is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_layer_costs_handles_integer_inputs():
    layers = [nn.Embedding(10, 4), nn.Linear(4, 2)]
    costs = layer_costs(layers, torch.tensor([[1, 2, 3]]), repeats=1)
    assert len(costs) == 2
