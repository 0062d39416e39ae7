"""Delay-aware optimizers, and what a stage tells an optimizer factory about its delay.

A factory that takes a keyword ``stage`` is called ``make_opt(params, stage=StageInfo(...))`` once per stage
(``StageSpec.build``), so it can set a per-stage learning rate or momentum from the stage's delay::

    def make_opt(params, stage):
        return torch.optim.SGD(params, lr=0.1 / max(1, stage.tau), momentum=0.9)

Two rules built on it ship here: ``nag_async`` (Ajanthan et al., ICML 2025: NAdam with decoupled weight
decay, beta1 = 0.99; the no-stash variant's per-stage momentum) and ``pipemare`` (Yang et al., MLSys 2021:
the learning-rate correction lr / tau^(1 - min(t / T, 1))).

``versions`` is read off the schedule: V_k = 1 + the largest staleness tau of a gradient applied at stage k
in the steady state (``Schedule.staleness``), i.e. the weight versions one batch's gradient spans there (the
one its forward used and the tau updates made before it is applied); a stashing stage holds that many. For
PipeDream's 1F1B (the reference's schedule) V_k = K - k; here: ``locked`` (DDG, FR) K - k, ``decoupled``
(FDG, DSP, ...) 2(K-1-k) + 1 ("fb") or 2(K-1-k) ("bf", k < K-1), ``bp`` and ``local`` 1; with ADL's
accumulation M, 1 + ceil(d_k / M) or near it (``steady_staleness``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..schedule import Schedule
from .nag_async import NAG_BETA1, adaptive_momentum, nag_async
from .pipemare import PipeMareLR, lr_factor, pipemare


@dataclass(frozen=True)
class StageInfo:
    """What a stage-aware optimizer factory learns about its stage.

    index, num_stages: k and K. delay: d_k in ticks (``Schedule.delay``). versions: V_k, the weight versions
    one gradient spans (module docstring); ``tau = versions - 1`` is its staleness in updates.
    batches_per_epoch: of the fit that built the optimizer. stash: whether the method's delayed backwards
    differentiate the forward's own weights (weight stashing; False: they recompute with the current weights:
    DSP, DTRP, FR). max_versions: the largest V of the pipeline (stage 0's). updates_per_epoch: the stage's
    updates per epoch (batches / accumulation M).
    """
    index: int
    num_stages: int
    delay: int
    versions: int
    batches_per_epoch: int
    stash: bool = True
    max_versions: int = 1
    updates_per_epoch: float = 1.0

    @property
    def tau(self) -> int:
        return self.versions - 1


def versions(schedule: Schedule, k: int) -> int:
    """V_k: 1 + the largest staleness at stage k over a run long enough to reach the steady state."""
    n = 4 * (schedule.num_stages + schedule.accumulate) + 8
    long = Schedule(schedule.family, schedule.num_stages, n, schedule.order, schedule.accumulate)
    return 1 + max(long.staleness(k, b) for b in range(n))


def stage_info(schedule: Schedule, k: int, batches_per_epoch: int, stash: bool = True) -> StageInfo:
    """The StageInfo of stage k of ``schedule`` (``stash``: the method's ``activations == "stash"``)."""
    K = schedule.num_stages
    return StageInfo(k, K, schedule.delay(k), versions(schedule, k), batches_per_epoch, stash=stash,
                     max_versions=max(versions(schedule, j) for j in range(K)),
                     updates_per_epoch=batches_per_epoch / schedule.accumulate)


__all__ = ["NAG_BETA1", "PipeMareLR", "StageInfo", "adaptive_momentum", "lr_factor", "nag_async", "pipemare",
           "stage_info", "versions"]
