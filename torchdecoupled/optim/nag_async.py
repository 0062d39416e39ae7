"""The Nesterov method for asynchronous pipelines (Ajanthan, Ramasinghe, Zuo, Avraham, Long, "Nesterov Method
for Asynchronous Pipeline Parallel Optimization", ICML 2025, arXiv 2505.01099), as its reference code runs it.

The paper reads Nesterov's look-ahead as a correction for the weights' drift over the delay, with the
gradient discounted by (1 - momentum). Its reference (PluralisResearch/AsyncPP) runs it as NAdam with
decoupled weight decay over PipeDream's weight stashing; read there:

- ``run.bash``: ``--optimizer nadamw --momentum 0.99``;
- ``main_with_runtime.py``: ``NAdamWithWeightStashing(..., betas=(args.momentum, 0.999),
  momentum_decay=args.momentum_decay, weight_decay=args.weight_decay)`` with ``--momentum_decay`` 0.004 and
  ``--weight-decay`` 0.01 by default;
- ``optim/nadamw.py``: ``torch.optim.NAdam`` with ``decoupled_weight_decay=True`` (eps: torch's 1e-8);
- the no-stash variant (``--adaptive_momentum``): ``m_s = m + (V_s - 1)(0.99 - m) / K`` (asserted in [0, 1]),
  V_s = PipeDream's weight versions of stage s (warm-up mini-batches + 1 = K - s under 1F1B), m from
  ``--momentum`` (default 0.9).

Our stages stash weights themselves (``stage.py``), so a stashing stage gets plain NAdam with beta1 = 0.99.
A stage of a method that recomputes (DSP, DTRP, FR: no stash) gets the adaptive momentum with V_s from the
schedule (``torchdecoupled.optim.versions``). One choice is ours: the divisor is the pipeline's largest V
(stage 0's), not K. Under 1F1B and our forward-locked family (DDG, FR) the two are equal (V_0 = K); in the
fully decoupled family stage 0 spans up to 2K - 1 versions, where dividing by K would push beta1 past 0.99
and (m = 0.9, K >= 4) past 1.
"""
from __future__ import annotations

import torch

NAG_BETA1 = 0.99            # run.bash: --momentum 0.99, passed as NAdam's beta1
NAG_BETA2 = 0.999           # main_with_runtime.py: betas=(args.momentum, 0.999)
NAG_MOMENTUM_DECAY = 0.004  # main_with_runtime.py: --momentum_decay default (torch's NAdam default too)
NAG_WEIGHT_DECAY = 0.01     # main_with_runtime.py: --weight-decay default
MOMENTUM_TOP = 0.99         # the adaptive momentum's limit


def adaptive_momentum(m: float, versions: int, depth: int) -> float:
    """The no-stash stage's momentum ``m + (V - 1)(0.99 - m) / depth`` (depth: the largest V of the pipeline;
    the reference's K)."""
    if not 0 <= m < 1:
        raise ValueError(f"momentum must be in [0, 1), got {m}")
    if not 1 <= versions <= depth:
        raise ValueError(f"versions must be in [1, depth], got versions={versions}, depth={depth}")
    return m + (versions - 1) * (MOMENTUM_TOP - m) / depth


def nag_async(params, lr: float, *, stage=None, weight_decay: float = NAG_WEIGHT_DECAY, beta1: float = NAG_BETA1,
              beta2: float = NAG_BETA2, momentum_decay: float = NAG_MOMENTUM_DECAY, eps: float = 1e-8,
              momentum: float = 0.9) -> torch.optim.NAdam:
    """NAdam with decoupled weight decay, beta1 = ``beta1`` (0.99) on a stage that stashes weights (or with no
    ``stage`` given); on a stage of a method that recomputes (``stage.stash`` False), beta1 =
    ``adaptive_momentum(momentum, stage.versions, stage.max_versions)``. ``stage``: the ``StageInfo`` a
    stage-aware factory receives::

        Pipeline(model, "fdg", 4, optimizer=lambda p, stage: nag_async(p, lr=1e-3, stage=stage))
    """
    b1 = beta1
    if stage is not None:
        if not hasattr(stage, "stash") or not hasattr(stage, "versions"):
            raise TypeError(f"stage must be the StageInfo a stage-aware factory receives, got "
                            f"{type(stage).__name__}: write optimizer=lambda params, stage: nag_async(params, "
                            f"lr=..., stage=stage)")
        if not stage.stash:
            b1 = adaptive_momentum(momentum, stage.versions, stage.max_versions)
    return torch.optim.NAdam(params, lr=lr, betas=(b1, beta2), eps=eps, weight_decay=weight_decay,
                             momentum_decay=momentum_decay, decoupled_weight_decay=True)
