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

Local learning (``dgl``, ``infopro``, ``local``): stage k < K-1 trains on an auxiliary head, and its
optimizer holds the stage's and the head's parameters. The heads are sized by a forward of ``sample``,
or else of the first data the pipeline sees (``fit``'s first batch), and need ``num_classes``:

    pipe = td.Pipeline(model, "dgl", 3, num_classes=10, optimizer=...)              # DGL's MLP-SR-aux heads
    pipe = td.Pipeline(model, "local", 3, head="linear", num_classes=10, optimizer=...)
    pipe = td.Pipeline(model, "local", 3, num_classes=10, optimizer=...,            # your own heads
                       head=lambda k, feature_shape, num_classes, input_shape: MyHead(feature_shape[0], num_classes))
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .engines.sim import evaluate, run_sim
from .heads import FACTORY_FIX, AuxHead, HeadFactory, check_factory, stage_head
from .methods import METHODS, get_method
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
    """Your ``nn.Sequential`` cut into ``stages`` stages, trained by ``method`` in the simulator.

    optimizer, scheduler: factories, called once per stage (``optimizer(params)``, ``scheduler(opt)``).
    criterion: the last stage's loss (default cross-entropy). boundaries / balance / sample: the partition
    (``torchdecoupled.partition.split``). seed: dropout masks and head initialization.
    head: local learning's auxiliary head, a name in ``torchdecoupled.heads.HEADS`` (dgl and local take one;
    infopro's is fixed) or a factory ``(stage_index, feature_shape, num_classes, input_shape) -> AuxHead``
    called once per stage k < K-1 (any local method). num_classes: what the heads classify; required by the
    local methods, ignored by the others. sample: also sizes the heads (default: fit's first batch).
    method_opts: the method's options (beta=, accumulate=, order=, predictor=, ...).
    """

    def __init__(self, model: nn.Sequential, method: str = "fdg", stages: int = 2, *,
                 optimizer: Callable[[list], torch.optim.Optimizer],
                 scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
                 criterion: Callable | None = None, boundaries: list[int] | None = None,
                 balance: str = "params", sample: torch.Tensor | None = None, seed: int = 0,
                 head: str | HeadFactory | None = None, num_classes: int | None = None, **method_opts):
        factory = None if head is None or isinstance(head, str) else check_factory(head)
        self.method = get_method(method, head=None if factory else head, **method_opts)
        if self.method.family == "local":
            if num_classes is None:
                raise ValueError(f"method {method!r} trains stages 0..K-2 on auxiliary heads that classify: "
                                 f"pass num_classes= (e.g. num_classes=10 for digits)")
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
                raise ValueError(f"num_classes must be an integer >= 2 (got {num_classes!r})")
        elif factory is not None:
            local = sorted(n for n in METHODS if get_method(n).family == "local")
            raise ValueError(f"method {method!r} has no auxiliary heads: head= is for the local-learning "
                             f"methods ({', '.join(local)})")
        self.head, self.num_classes = factory or self.method.head, num_classes
        self.modules = split(model, stages, boundaries=boundaries, balance=balance, sample=sample,
                             recompute=self.method.activations == "recompute")
        self.make_opt, self.make_sched, self.criterion, self.seed = optimizer, scheduler, criterion, seed
        self.stages: list[Stage] = []
        self.heads: list[AuxHead] = []
        if self.method.family != "local" or len(self.modules) == 1 or sample is not None:
            self._ready(sample)

    def _ready(self, x: torch.Tensor | None) -> None:
        """Build the stages once: local learning first sizes its heads by a forward of x."""
        if self.stages:
            return
        if self.method.family == "local" and len(self.modules) > 1:
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"method {self.method.name!r} sizes its auxiliary heads by a forward of an input "
                                 f"batch: pass sample=<a tensor of inputs> (got {type(x).__name__})")
            for k in range(len(self.modules) - 1):
                h = stage_head(self.head, self.modules, k, x, self.num_classes, seed=self.seed)
                if any(h is old for old in self.heads):
                    raise ValueError(f"the head factory returned the same head for stages {self.heads.index(h)} "
                                     f"and {k}: {FACTORY_FIX}")
                self.heads.append(h)
        self._build(1, 1)

    def _build(self, num_batches: int, per_epoch: int) -> Schedule:
        m, K = self.method, len(self.modules)
        schedule = Schedule(m.family, K, num_batches, m.order, m.accumulate)
        old = self.stages
        self.stages = []
        for k, mod in enumerate(self.modules):
            head = self.heads[k] if k < len(self.heads) else None
            params = list(mod.parameters()) + (list(head.parameters()) if head is not None else [])
            opt = old[k].optimizer if old else self.make_opt(params)
            sched = old[k].scheduler if old else (self.make_sched(opt) if self.make_sched else None)
            predictor = old[k].predictor if old else None
            if predictor is None and m.predictor != "none":
                from .predict import make_predictor
                predictor = make_predictor(m.predictor)
            if hasattr(predictor, "remove"):
                predictor.remove()  # the new Stage attaches it again: one set of optimizer hooks, state kept
            self.stages.append(Stage(k, schedule, m, mod, opt, scheduler=sched, criterion=self.criterion,
                                     head=head, predictor=predictor, seed=self.seed, batches_per_epoch=per_epoch))
        return schedule

    def fit(self, data, epochs: int = 1, on_tick: Callable[[int], None] | None = None) -> list[dict]:
        """Train for ``epochs`` passes over ``data`` (an iterable of (x, y) with a length, or an object
        with ``get(b)`` and ``per_epoch``). Returns each stage's telemetry for the run."""
        batches = data if hasattr(data, "get") and hasattr(data, "per_epoch") else LoaderBatches(data)
        self._ready(batches.get(0)[0] if not self.stages else None)
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
        self._ready(x)
        for s in self.stages:
            x = s.predict(x)
        return x

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict:
        self._ready(x)
        return evaluate(self.stages, x, y, batch_size)
