"""Cut a network (an nn.Sequential of blocks) into K contiguous stages.

Four ways to choose the cut points ("boundaries": stage k holds layers[b_{k-1}:b_k], b_{-1} = 0,
b_{K-1} = L):

- explicit ``boundaries``;
- ``balance="uniform"``: equal numbers of layers;
- ``balance="params"``: minimise the largest per-stage parameter count;
- ``balance="time"``: minimise the largest per-stage forward + backward time measured on a sample.

Every stage gets at least one layer with trainable parameters: parameter-free layers (ReLU, Flatten,
Dropout) join a neighbour, never form a stage of their own (such a stage would have nothing to train and
no optimizer). ``balance_costs`` takes that as a constraint (``trainable``), explicit boundaries that break
it are refused.

The min-max problem is solved exactly by dynamic programming (``balance_costs``, pure Python).
Ties are broken deterministically: among the partitions with the smallest maximum, the one with the
smallest sum of squared stage costs (the most even), then the one with the earliest cuts (earlier
stages, which stash more in-flight activations in a pipeline, get less).

Batch compensation (DTRP, methods.md) -- our interpretation, the paper's scheme is not public: with
recomputation a stage k < K-1 re-runs its forward at its backward, so it costs F + F + B per tick
while the last stage costs F + B. With ``recompute=True`` the DP balances exactly that per-stage
cost, which moves layers towards the last stage and evens out the per-tick work.
"""
from __future__ import annotations

import itertools
import numbers
import operator
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .layer_time import layer_costs

__all__ = ["split", "balance_costs", "stage_costs", "layer_costs", "describe"]

BALANCES = ("params", "time", "uniform")


def split(model: nn.Sequential | Sequence[nn.Module], num_stages: int, *,
          boundaries: Sequence[int] | None = None, balance: str = "params",
          sample: torch.Tensor | None = None, recompute: bool = False,
          repeats: int = 3) -> list[nn.Sequential]:
    """Cut ``model`` into ``num_stages`` nn.Sequential stages holding the same module objects.

    ``boundaries`` (K-1 increasing cut points) take precedence over ``balance``. Stage children keep
    the names they had in ``model`` (list input: their global index), so stage state_dict keys match.
    Every stage holds a layer with trainable parameters (a ValueError where that is impossible, or where
    ``boundaries`` leave a stage without one).
    """
    named = _named_layers(model)
    n = len(named)
    _check_counts(n, num_stages)
    if balance not in BALANCES:
        raise ValueError(f"unknown balance {balance!r} (valid: {', '.join(BALANCES)})")
    trainable = [_trainable(m) for _, m in named]
    _check_trainable(trainable, num_stages)
    if boundaries is not None:
        cuts = _check_boundaries(boundaries, n, num_stages)
        _check_every_stage_trains(named, trainable, cuts)
    elif balance == "uniform":
        cuts = balance_costs([1] * n, num_stages, trainable=trainable)
    elif balance == "params":
        cuts = balance_costs([_num_params(m) for _, m in named], num_stages, trainable=trainable)
    else:
        if sample is None:
            raise ValueError("balance='time' measures each layer on a batch: pass sample=<an input "
                             "batch for the first layer> (or use balance='params')")
        cuts = balance_costs(layer_costs([m for _, m in named], sample, repeats),
                             num_stages, recompute=recompute, trainable=trainable)
    edges = [0, *cuts, n]
    return [nn.Sequential(OrderedDict(named[a:b])) for a, b in zip(edges, edges[1:])]


def balance_costs(costs: Sequence[float] | Sequence[tuple[float, float]], num_stages: int,
                  recompute: bool = False, trainable: Sequence[bool] | None = None) -> list[int]:
    """Boundaries (K-1 cut points) of the contiguous partition minimising the largest stage cost.

    ``costs`` holds one number per layer, or one (forward, backward) pair per layer. A stage costs
    the sum of its layers' F + B; with ``recompute=True`` stages k < K-1 cost F + F + B (pairs needed).
    ``trainable`` (one flag per layer): only partitions where every stage holds a flagged layer (None:
    every layer counts, so every non-empty stage is allowed).
    Exact: O(K L^2). Ties: smallest sum of squared stage costs, then earliest cuts.
    """
    mid, last = _prefix_sums(costs, recompute)
    n = len(mid) - 1
    _check_counts(n, num_stages)
    if trainable is not None and len(trainable) != n:
        raise ValueError(f"trainable has {len(trainable)} flags for {n} layers: give one per layer")
    # held[j]: flagged layers in layers[:j]; with every layer flagged held[j] = j
    held = [0, *itertools.accumulate(map(bool, trainable))] if trainable is not None else list(range(n + 1))
    _check_trainable(trainable, num_stages)

    def cost(i: int, j: int, k: int) -> float:  # layers[i:j] as a stage with k stages left
        prefix = last if k == 1 else mid
        return prefix[j] - prefix[i]

    def ends(i: int, k: int) -> list[int]:  # ends j of a stage layers[i:j] holding a flagged layer, with
        # a flagged layer left in layers[j:] for each of the k - 1 stages after it
        return [j for j in range(i + 1, n - k + 2) if held[j] > held[i] and held[n] - held[j] >= k - 1]

    # worst[k][i]: smallest max stage cost of layers[i:] cut into k stages (the last one is the end).
    inf = float("inf")
    worst = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    for i in range(n):
        worst[1][i] = cost(i, n, 1) if held[n] > held[i] else inf
    for k in range(2, num_stages + 1):
        for i in range(n - k + 1):
            worst[k][i] = min((max(cost(i, j, k), worst[k - 1][j]) for j in ends(i, k)), default=inf)
    bound = worst[num_stages][0]

    # squares[k][i]: smallest sum of squared stage costs of such a cut with every stage <= bound.
    squares = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    for i in range(n):
        c = cost(i, n, 1)
        squares[1][i] = c * c if c <= bound and held[n] > held[i] else inf
    for k in range(2, num_stages + 1):
        for i in range(n - k + 1):
            squares[k][i] = min((_square_step(cost(i, j, k), squares[k - 1][j], bound) for j in ends(i, k)),
                                default=inf)

    cuts, i = [], 0
    for k in range(num_stages, 1, -1):  # earliest cut that keeps the optimum
        i = next(j for j in ends(i, k) if _square_step(cost(i, j, k), squares[k - 1][j], bound) == squares[k][i])
        cuts.append(i)
    return cuts


def stage_costs(costs: Sequence[float] | Sequence[tuple[float, float]],
                boundaries: Sequence[int], recompute: bool = False) -> list[float]:
    """Per-stage per-tick cost of a partition, as ``balance_costs`` counts it (for reports)."""
    mid, last = _prefix_sums(costs, recompute)
    n = len(mid) - 1
    cuts = _check_boundaries(boundaries, n, len(boundaries) + 1)
    edges = [0, *cuts, n]
    out = [mid[b] - mid[a] for a, b in zip(edges[:-2], edges[1:-1])]
    return out + [last[n] - last[edges[-2]]]


def describe(stages: Sequence[nn.Module]) -> str:
    """A small table: stage, global layer index range, number of layers, parameters."""
    rows, start = [("stage", "layers", "count", "params")], 0
    for k, stage in enumerate(stages):
        count = len(stage)
        span = f"{start}-{start + count - 1}" if count > 1 else f"{start}"
        rows.append((str(k), span, str(count), f"{_num_params(stage):,}"))
        start += count
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


# --- helpers ---------------------------------------------------------------------------------

def _named_layers(model) -> list[tuple[str, nn.Module]]:
    if isinstance(model, (nn.Sequential, nn.ModuleList)):
        named = list(model._modules.items())  # keeps repeated (weight-shared) entries
    elif isinstance(model, nn.Module) or not isinstance(model, Sequence):
        raise TypeError(f"split needs an nn.Sequential or a list of modules (got "
                        f"{type(model).__name__}): wrap its blocks as nn.Sequential(block, ...)")
    else:
        named = [(str(i), m) for i, m in enumerate(model)]
    for name, m in named:
        if not isinstance(m, nn.Module):
            raise TypeError(f"layer {name} is a {type(m).__name__}, not an nn.Module: "
                            f"pass only modules")
    return named


def _check_counts(num_layers: int, num_stages: int) -> None:
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be an integer >= 1 (got {num_stages!r})")
    if num_stages > num_layers:
        raise ValueError(f"cannot cut {num_layers} layers into {num_stages} stages: use --stages "
                         f"<= {num_layers} or a model with more blocks")


def _check_boundaries(boundaries: Sequence[int], num_layers: int, num_stages: int) -> list[int]:
    try:
        cuts = [operator.index(b) for b in boundaries]
    except TypeError:
        raise TypeError(f"boundaries must be integers (got {list(boundaries)!r})") from None
    hint = f"pass {num_stages - 1} strictly increasing cut points in (0, {num_layers})"
    if len(cuts) != num_stages - 1:
        raise ValueError(f"{num_stages} stages need {num_stages - 1} boundaries (got {len(cuts)}: "
                         f"{cuts}): {hint}")
    for k, b in enumerate(cuts):
        if not 0 < b < num_layers:
            raise ValueError(f"boundary {b} (boundaries: {cuts}) is out of range for "
                             f"{num_layers} layers: {hint}")
        if k and b <= cuts[k - 1]:
            raise ValueError(f"boundaries {cuts} are not strictly increasing ({cuts[k - 1]} then "
                             f"{b}) and would leave stage {k} empty: {hint}")
    return cuts


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _check_trainable(trainable: Sequence[bool] | None, num_stages: int) -> None:
    if trainable is None:
        return
    count = sum(map(bool, trainable))
    if count == 0:
        raise ValueError(f"no layer of the model (of {len(trainable)}) has trainable parameters: there is nothing "
                         f"to train; set requires_grad=True on some")
    if count < num_stages:
        raise ValueError(f"cannot cut a model with {count} layers with trainable parameters (of {len(trainable)} "
                         f"layers) into {num_stages} stages: every stage needs one, so it can be cut into at "
                         f"most {count} stages; use --stages <= {count}")


def _check_every_stage_trains(named, trainable: list[bool], cuts: list[int]) -> None:
    """Explicit boundaries: every stage must hold a layer with trainable parameters."""
    edges = [0, *cuts, len(named)]
    for k, (a, b) in enumerate(zip(edges, edges[1:])):
        if not any(trainable[a:b]):
            layers = ", ".join(f"{name} ({type(m).__name__})" for name, m in named[a:b])
            valid = balance_costs([1] * len(named), len(cuts) + 1, trainable=trainable)
            raise ValueError(f"boundaries {cuts} leave stage {k} (layers {layers}) without trainable parameters: "
                             f"every stage needs a layer with parameters; move the cut so that parameter-free "
                             f"layers join a neighbour, e.g. boundaries {valid}")


def _prefix_sums(costs, recompute: bool) -> tuple[list[float], list[float]]:
    """Prefix sums of the per-layer cost of a middle stage and of the last stage."""
    mid, last = [0.0], [0.0]
    for index, c in enumerate(costs):
        if not isinstance(c, numbers.Real):
            if len(c) != 2:
                raise ValueError(f"cost of layer {index} is {c!r}: give a number or a "
                                 f"(forward, backward) pair")
            f, b = float(c[0]), float(c[1])
            values = (f, b)
        elif recompute:
            raise ValueError(f"recompute=True needs (forward, backward) pairs to count the "
                             f"re-run forward (layer {index} costs {c!r}): pass layer_costs(...)")
        else:
            f, b = float(c), 0.0
            values = (f,)
        if any(not (v >= 0.0 and v < float("inf")) for v in values):
            raise ValueError(f"cost of layer {index} is {c!r}: costs must be finite and >= 0")
        mid.append(mid[-1] + (2 * f + b if recompute else f + b))
        last.append(last[-1] + f + b)
    return mid, last


def _square_step(c: float, rest: float, bound: float) -> float:
    return c * c + rest if c <= bound else float("inf")


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cut_points(stage_modules) -> list[int]:
    """The cut points of a split: ``--partition a,b,...`` reproduces it."""
    return list(itertools.accumulate(len(m) for m in stage_modules))[:-1]
