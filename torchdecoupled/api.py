"""The Python API: train your own ``nn.Sequential`` with your own optimizer, decoupled.

    import torch, torchdecoupled as td
    model = torch.nn.Sequential(...)                       # any sequence of blocks
    pipe = td.Pipeline(model, method="fdg", stages=2, beta=0.5,
                       optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
                       scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10))
    pipe.fit(train_loader, epochs=10)                      # any iterable of (x, y), e.g. a DataLoader
    print(pipe.evaluate(test_x, test_y))

Each stage gets its own optimizer (and scheduler) from the factories, built on its parameters.
The scheduler is stepped once per epoch per stage, after the stage applies the epoch's last gradient.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .engines.sim import evaluate, run_sim
from .methods import get_method
from .partition import split
from .schedule import Schedule
from .stage import Stage


class LoaderBatches:
    """Random access by global batch index over an iterable of (x, y), re-iterated once per epoch.

    The simulator asks for batch b at stage 0 (inputs) and again at the last stage (labels), a few ticks
    later; batches are kept until both have used them."""

    def __init__(self, loader: Iterable, per_epoch: int | None = None):
        self.loader = loader
        self.per_epoch = per_epoch if per_epoch is not None else len(loader)
        if self.per_epoch < 1:
            raise ValueError(f"the data has {self.per_epoch} batches per epoch; need at least 1")
        self.cache: dict[int, tuple] = {}
        self.next_b, self.it = 0, None

    def get(self, b: int):
        while self.next_b <= b:
            if self.next_b % self.per_epoch == 0:
                self.it = iter(self.loader)
            try:
                self.cache[self.next_b] = tuple(next(self.it))[:2]
            except StopIteration:
                raise ValueError(f"the data gave fewer batches than its length {self.per_epoch}") from None
            self.next_b += 1
        if b not in self.cache:
            raise RuntimeError(f"batch {b} was already released")
        return self.cache[b]

    def release_before(self, b: int) -> None:
        for old in [k for k in self.cache if k < b]:
            del self.cache[old]


class Pipeline:
    def __init__(self, model: nn.Sequential, method: str = "fdg", stages: int = 2, *,
                 optimizer: Callable[[list], torch.optim.Optimizer],
                 scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
                 criterion: Callable | None = None, boundaries: list[int] | None = None,
                 balance: str = "params", sample: torch.Tensor | None = None, seed: int = 0, **method_opts):
        self.method = get_method(method, **method_opts)
        if self.method.family == "local":
            raise ValueError(f"method {method!r} needs auxiliary heads: use the CLI / RunConfig API for now")
        self.modules = split(model, stages, boundaries=boundaries, balance=balance, sample=sample,
                             recompute=self.method.activations == "recompute")
        self.make_opt, self.make_sched, self.criterion, self.seed = optimizer, scheduler, criterion, seed
        self.stages: list[Stage] = []
        self._build(1, 1)

    def _build(self, num_batches: int, per_epoch: int) -> Schedule:
        m, K = self.method, len(self.modules)
        schedule = Schedule(m.family, K, num_batches, m.order, m.accumulate)
        old = self.stages
        self.stages = []
        for k, mod in enumerate(self.modules):
            opt = old[k].optimizer if old else self.make_opt(list(mod.parameters()))
            sched = old[k].scheduler if old else (self.make_sched(opt) if self.make_sched else None)
            predictor = None
            if m.predictor != "none":
                from .predict import make_predictor
                predictor = make_predictor(m.predictor)
            self.stages.append(Stage(k, schedule, m, mod, opt, scheduler=sched, criterion=self.criterion,
                                     predictor=predictor, seed=self.seed, batches_per_epoch=per_epoch))
        return schedule

    def fit(self, data, epochs: int = 1, on_tick: Callable[[int], None] | None = None) -> list[dict]:
        """Train for ``epochs`` passes over ``data`` (an iterable of (x, y) with a length, or an object
        with ``get(b)`` and ``per_epoch``). Returns each stage's telemetry for the run."""
        batches = data if hasattr(data, "get") and hasattr(data, "per_epoch") else LoaderBatches(data)
        schedule = self._build(epochs * batches.per_epoch, batches.per_epoch)
        release = getattr(batches, "release_before", None)

        def tick(t: int) -> None:
            if release is not None:  # the last stage, the latest reader, is done with these batches
                release(t - schedule.loss_tick(0) + 1)
            if on_tick is not None:
                on_tick(t)

        run_sim(self.stages, schedule, batches, on_tick=tick)
        return [s.collect(epochs - 1) for s in self.stages]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.stages:
            x = s.predict(x)
        return x

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict:
        return evaluate(self.stages, x, y, batch_size)
