"""``torchdecoupled.plan(model, sample, stages=..., method=...)``: how fast, how much memory, where to cut.

For every K and method: the best cut (``search.best_cut``), its simulated period per tick, throughput,
speed-up over BP on one device (one process, one thread, the whole batch), the idle fraction and memory of
every stage, and the same for the parameter balance. Nothing is trained; the costs are measured once on
this machine (``costs.measure``) or read from a cost file measured elsewhere.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..methods import Method, get_method
from .costs import Costs, load, measure
from .heads import head_costs
from .links import Link, get_link
from .search import Setup, best_cut, evaluate

# dataset -> (input shape, classes), for zoo models planned without loading the data
# Processes sharing one host slow each other (shared caches and memory bandwidth): measured on the 2-core
# development VM, one-thread training loops of a ResNet-20 stage ran 4.4 to 7.5 % slower 2, 3 or 4 at a time
# than one alone (thread CPU per step, two probes; benchmarks/plan_validate.py --probe).
CONTENTION = 0.06

DATASET_SHAPES = {"cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100), "synthetic": ((3, 32, 32), 10),
                  "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10), "digits": ((1, 8, 8), 10),
                  "mnist1d": ((40,), 10), "folder": ((3, 32, 32), 10)}


@dataclass
class PlanResult:
    method: str
    stages: int
    replicas: int
    batch: int
    boundaries: list[int]
    blocks: list[int]                  # layers per stage
    period_s: float                    # seconds per tick (one batch through the pipeline) in steady state
    throughput: float                  # samples per second
    speedup: float                     # over BP with the whole batch on one device
    stage_s: list[float]               # compute per tick of each stage (F + B + U, all-reduce included)
    idle: list[float]                  # fraction of the period each stage waits
    memory: list[dict]                 # bytes per stage (profile.memory)
    params_boundaries: list[int]
    params_period_s: float
    bp_period_s: float
    link: str
    cores: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def zoo_inputs(model: str, dataset: str, batch: int, seed: int = 0):
    """A zoo model for a dataset's input shape and a random batch of that shape (no data is loaded)."""
    from ..models import build_model
    if dataset not in DATASET_SHAPES:
        raise ValueError(f"unknown dataset {dataset!r} for the planner (valid: {', '.join(sorted(DATASET_SHAPES))})")
    shape, classes = DATASET_SHAPES[dataset]
    torch.manual_seed(seed)
    net = build_model(model, classes, shape)
    g = torch.Generator().manual_seed(seed)
    return net, torch.randn((batch, *shape), generator=g), torch.randint(classes, (batch,), generator=g)


def plan(model: nn.Sequential, sample: torch.Tensor, target: torch.Tensor | None = None, *,
         stages: int | Iterable[int] = 2, method: str | Method | Iterable = "fdg", replicas: int = 1,
         link: str | Link = "gloo-local", costs: str | Costs | None = None, cores: int | None = None,
         repeats: int = 3, optimizer: str = "sgd", steps: int = 24,
         contention: float | None = None) -> list[PlanResult]:
    """Plan ``model`` (an nn.Sequential of blocks, cut between children) for a batch like ``sample``.

    ``stages``: K or several; ``method``: a name, a Method, or several; ``replicas``: D data-parallel
    copies of every stage (each gets ``ceil(batch / D)`` samples); ``link``: a preset of ``links.LINKS``, a
    ``"GB/s,us"`` pair or a Link; ``costs``: a cost file (path) or Costs measured elsewhere, at any batch
    (scaled linearly), else measured here with one thread; ``cores``: the cores the K x D processes share
    (None: one each); ``contention``: the fraction by which compute slows while the processes share one
    host's caches and memory (default: ``CONTENTION`` when ``cores`` is given, else 0). Returns one
    PlanResult per (method, K), methods outer. Measured here, the costs
    are closest to a stage process's after ``torchdecoupled.engines.malloc.keep_freed_memory()`` (the
    engine's allocator settings; the CLI applies them): otherwise page faults add 10 to 30 % on a CPU."""
    ks = _stages(stages)
    methods = [_method(m) for m in (method if isinstance(method, (list, tuple)) else [method])]
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1 (got {replicas!r})")
    if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int) or cores < 1):
        raise ValueError(f"cores must be an integer >= 1 or None (got {cores!r})")
    if contention is None:
        contention = CONTENTION if cores is not None else 0.0
    if isinstance(contention, bool) or not isinstance(contention, (int, float)) or not 0 <= contention < 10:
        raise ValueError(f"contention must be a fraction >= 0 such as 0.06 (got {contention!r})")
    link = get_link(link)
    batch = int(sample.shape[0])
    per_replica = math.ceil(batch / replicas)
    full, part = _costs(model, sample, target, costs, repeats, per_replica,
                        {m.head for m in methods if m.family == "local"})
    n = len(full.layers)
    if max(ks) > n:
        raise ValueError(f"cannot cut {n} layers into {max(ks)} stages: use stages <= {n}")
    bp = evaluate(Setup(full, get_method("bp"), 1, link, steps=steps), [])["period_s"]
    out = []
    for m in methods:
        for K in ks:
            setup = Setup(part, m, K, link, replicas, cores, steps, optimizer=optimizer, contention=contention)
            best, params = best_cut(setup)
            out.append(PlanResult(
                m.describe(), K, replicas, batch, best["boundaries"], _blocks(best["boundaries"], n),
                best["period_s"], batch / best["period_s"], bp / best["period_s"], best["stage_s"], best["idle"],
                best["memory"], params["boundaries"], params["period_s"], bp, link.describe(), cores))
    return out


def _stages(stages) -> list[int]:
    ks = [stages] if isinstance(stages, int) and not isinstance(stages, bool) else list(stages)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"stages must be integers >= 1 (got {stages!r}), e.g. stages=range(1, 9)")
    return ks


def _method(m) -> Method:
    return m if isinstance(m, Method) else get_method(m)


def _costs(model, sample, target, costs, repeats, per_replica, heads) -> tuple[Costs, Costs]:
    """Costs at the whole batch (BP's reference) and at the per-replica batch."""
    if costs is not None:
        c = load(costs) if isinstance(costs, str) else costs
        if not isinstance(c, Costs):
            raise TypeError(f"costs must be a cost file path or a Costs (got {type(c).__name__})")
        if model is not None and len(list(model)) != len(c.layers):
            raise ValueError(f"the costs describe {len(c.layers)} layers, the model has {len(list(model))}: "
                             f"measure them on this model")
        return c.at_batch(int(sample.shape[0])), c.at_batch(per_replica)
    if not isinstance(model, (nn.Sequential, list, tuple)):
        raise TypeError(f"plan needs an nn.Sequential of blocks (got {type(model).__name__}): wrap its blocks "
                        f"as nn.Sequential(block, ...)")
    if target is None:
        target = _default_target(model, sample)
    full = _with_heads(measure(model, sample, target, repeats=repeats), model, sample, target, heads, repeats)
    if per_replica == full.batch:
        return full, full
    xs, ys = sample[:per_replica], target[:per_replica] if target is not None else None
    return full, _with_heads(measure(model, xs, ys, repeats=repeats), model, xs, ys, heads, repeats)


def _default_target(model, sample):
    """Class labels for a classifier's output (2-D float), else None (no criterion counted)."""
    out = _probe(model, sample)
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.is_floating_point():
        return torch.zeros(sample.shape[0], dtype=torch.long)
    return None


def _probe(model, sample):
    """The model's output on two samples, in eval mode (nothing moves), modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad():
            return model.eval()(sample[:2])
    finally:
        for m, mode in modes:
            m.training = mode


def _with_heads(c: Costs, model, sample, target, heads, repeats) -> Costs:
    if not heads:
        return c
    if target is None:
        raise ValueError("local methods need class labels for their heads: pass target=")
    classes = int(_probe(model, sample).shape[-1])
    extra = {h: head_costs(model, sample, target, h, classes, repeats) for h in heads}
    return Costs(c.layers, c.batch, c.input_bytes, c.loss_bytes, c.device, c.model, c.note, {**c.heads, **extra})


def _blocks(boundaries, n: int) -> list[int]:
    e = [0, *boundaries, n]
    return [b - a for a, b in zip(e, e[1:])]
