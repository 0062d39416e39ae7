"""What it takes to build one stage, in any process.

The simulator (``Pipeline`` in one process) and every process of the distributed engine build their
``Stage`` with ``StageSpec.build``: the same module, factories and state, so the same first update.
A spec is small enough to send to the process that runs the stage (``engines/dist_launch``): the
stage's own layers and head, the user's factories, and, for a ``fit`` that continues an earlier one,
the stage's state (``checkpoint.stage_state``: optimizer, scheduler, predictor, update count).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from .methods import Method
from .schedule import Schedule
from .stage import Stage


@dataclass
class StageSpec:
    index: int
    module: nn.Module
    method: Method
    make_opt: Callable
    make_sched: Callable | None = None
    scheduler_interval: str = "epoch"
    criterion: Callable | None = None
    seed: int = 0
    head: nn.Module | None = None       # local learning's auxiliary head (stages 0..K-2)
    state: dict | None = None           # checkpoint.stage_state of an earlier fit: continue it
    precision: str = "float32"          # "bf16": autocast forwards, bfloat16 boundaries (precision.py)

    def with_head(self, head) -> "StageSpec":
        return replace(self, head=head)

    def build(self, schedule: Schedule, per_epoch: int, old: Stage | None = None) -> Stage:
        """A Stage for ``schedule``; ``old`` (this process's stage of an earlier fit) keeps its optimizer,
        scheduler and predictor objects, ``state`` restores them from another process's."""
        module, head, m = self.module, self.head, self.method
        if old is not None:
            opt, sched, predictor = old.optimizer, old.scheduler, old.predictor
            if hasattr(predictor, "remove"):
                predictor.remove()  # the new Stage attaches it again: one set of optimizer hooks, state kept
        else:
            params = list(module.parameters()) + (list(head.parameters()) if head is not None else [])
            opt = self.make_opt(params)
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"the optimizer factory returned {type(opt).__name__} for stage {self.index}; it must "
                                f"return a torch.optim.Optimizer, e.g. optimizer=lambda p: torch.optim.SGD(p, lr=0.1)")
            _check_params(opt, params, self.index)
            sched = self.make_sched(opt) if self.make_sched is not None else None
            predictor = None
            if m.predictor != "none":
                from .predict import make_predictor
                predictor = make_predictor(m.predictor)
        stage = Stage(self.index, schedule, m, module, opt, scheduler=sched, criterion=self.criterion, head=head,
                      predictor=predictor, seed=self.seed, batches_per_epoch=per_epoch,
                      scheduler_interval=self.scheduler_interval, precision=self.precision)
        if old is not None:
            stage.num_updates = old.num_updates
        elif self.state is not None:
            from .checkpoint import restore_stage
            restore_stage(stage, self.state)
        return stage


def _check_params(opt: torch.optim.Optimizer, params: list, index: int) -> None:
    """An optimizer that holds parameters other than its stage's would train nothing of the stage."""
    mine = {id(p) for p in params}
    foreign = sum(1 for g in opt.param_groups for p in g["params"] if id(p) not in mine)
    if foreign:
        raise ValueError(f"the optimizer of stage {index} holds {foreign} parameter(s) that are not the stage's: "
                         f"build it from the parameters the factory is given, e.g. optimizer=lambda params: "
                         f"torch.optim.SGD(params, lr=0.1)")
