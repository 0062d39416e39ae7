"""What it takes to build one stage, in any process.

The simulator (``Pipeline`` in one process) and every process of the distributed engine build their
``Stage`` with ``StageSpec.build``: the same module, factories and state, so the same first update.
A spec is small enough to send to the process that runs the stage (``engines/dist_launch``): the
stage's own layers and head, the user's factories, and, for a ``fit`` that continues an earlier one,
the stage's state (``checkpoint.stage_state``: optimizer, scheduler, predictor, update count).

An optimizer factory with a keyword ``stage`` is called ``make_opt(params, stage=StageInfo(...))``
(``torchdecoupled.optim``): its delay, weight versions and the fit's batches per epoch. A Pipeline builds its
stages once before its first fit; a stage-aware factory's optimizer that never stepped is built again for the
fit's schedule (and such a state sent to a stage process is not restored), so ``batches_per_epoch`` is the fit's.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from .methods import Method
from .optim import StageInfo, stage_info
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
        info, aware = self.info(schedule, per_epoch), _stage_aware(self.make_opt)
        if old is not None and aware and old.num_updates == 0 and not old.inflight and \
                self.info(old.schedule, old.batches_per_epoch) != info:
            old = None  # never stepped, built for another schedule (Pipeline's first build): build for this one
        if old is not None:
            opt, sched, predictor = old.optimizer, old.scheduler, old.predictor
            if hasattr(predictor, "remove"):
                predictor.remove()  # the new Stage attaches it again: one set of optimizer hooks, state kept
        else:
            params = list(module.parameters()) + (list(head.parameters()) if head is not None else [])
            opt = self.make_opt(params, stage=info) if aware else self.make_opt(params)
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
        elif self.state is not None and not (aware and _unstepped(self.state)):  # else: what info changes
            from .checkpoint import restore_stage
            restore_stage(stage, self.state)
        return stage

    def info(self, schedule: Schedule, per_epoch: int) -> StageInfo:
        """What a stage-aware optimizer factory (one with a keyword ``stage``) is given for this stage."""
        return stage_info(schedule, self.index, per_epoch, stash=self.method.activations == "stash")


def _stage_aware(factory: Callable) -> bool:
    """Whether the optimizer factory takes the keyword ``stage`` (then it gets a ``StageInfo``)."""
    try:
        p = inspect.signature(factory).parameters.get("stage")
    except (TypeError, ValueError):  # no signature (a builtin)
        return False
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _unstepped(state: dict) -> bool:
    """A stage state of no update and nothing in flight (a Pipeline's first build, sent to a stage process)."""
    return state.get("num_updates") == 0 and not state.get("inflight") and \
        all(g is None for g in state.get("grads", []))


def _check_params(opt: torch.optim.Optimizer, params: list, index: int) -> None:
    """An optimizer that holds parameters other than its stage's would train nothing of the stage."""
    mine = {id(p) for p in params}
    foreign = sum(1 for g in opt.param_groups for p in g["params"] if id(p) not in mine)
    if foreign:
        raise ValueError(f"the optimizer of stage {index} holds {foreign} parameter(s) that are not the stage's: "
                         f"build it from the parameters the factory is given, e.g. optimizer=lambda params: "
                         f"torch.optim.SGD(params, lr=0.1)")
