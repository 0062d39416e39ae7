"""PipeMare's learning-rate correction (Yang, Zhang, Li, Ré, Aberger, De Sa, "PipeMare: Asynchronous Pipeline
Parallel DNN Training", MLSys 2021, arXiv 1910.05124), on any torch optimizer.

Stage s with delay tau_s (in updates) runs its t-th update (t = 1, 2, ...) at

    lr_s(t) = lr / tau_s^(1 - min(t / T, 1))

so it starts at lr / tau_s and reaches the plain lr after T updates; tau_s <= 1 means no correction. This is
the form PluralisResearch/AsyncPP runs (``main_with_runtime.py``, ``adjust_learning_rate``: ``lr /
(num_versions - 1) ** (1 - min((1 + step + epoch * epoch_length) / (lr_correction_epoch * epoch_length), 1))``
with ``--lr_correction_epoch`` 7 by default, applied only where ``num_versions > 1``): tau_s there is the
stage's weight versions minus one, its staleness, and so it is here (``StageInfo.tau``).

``lr`` is whatever the optimizer's param group holds when it steps, so the correction multiplies the user's
LR schedule (and ADL's warm-up) instead of replacing it: a pre-step hook divides every group's lr, a post-step
hook puts the exact values back. The update count t travels in the optimizer's ``state_dict`` (key
``"pipemare"``), so a checkpoint resumes in the middle of the correction bit for bit.

PipeMare's second technique, the discrepancy correction (an estimate of the backward's weights from recent
updates), is not implemented: no readable public source of its formula was found (the paper's text was not
available here, the reference implements only the learning-rate rule).
"""
from __future__ import annotations

import math

import torch

KEY = "pipemare"  # the entry of the optimizer's state_dict that holds t


def divisor(tau: int, t: int, horizon: float) -> float:
    """tau^(1 - min(t / T, 1)); 1.0 where tau <= 1 or t >= T (then the optimizer runs untouched)."""
    if tau <= 1 or t >= horizon:
        return 1.0
    return tau ** (1.0 - t / horizon)


def lr_factor(tau: int, t: int, horizon: float) -> float:
    """The factor PipeMare applies to the learning rate of update t: 1 / ``divisor``."""
    return 1.0 / divisor(tau, t, horizon)


class PipeMareLR:
    """The correction attached to ``optimizer`` (hooks; no other change to it). ``t``: updates made."""

    def __init__(self, optimizer: torch.optim.Optimizer, tau: int, horizon: float):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"pipemare() takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(tau, bool) or not isinstance(tau, int) or tau < 0:
            raise ValueError(f"tau must be an integer >= 0 (the stage's delay in updates), got {tau!r}")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, float)) or not 0 < horizon < math.inf:
            raise ValueError(f"horizon T must be a finite number of updates > 0, got {horizon!r}")
        self.optimizer, self.tau, self.horizon, self.t = optimizer, tau, float(horizon), 0
        self._kept: list | None = None
        optimizer.register_step_pre_hook(self._before)
        optimizer.register_step_post_hook(self._after)
        optimizer.register_state_dict_post_hook(self._save)
        optimizer.register_load_state_dict_pre_hook(self._load)
        optimizer.pipemare = self

    def factor(self, t: int | None = None) -> float:
        """The learning-rate factor of update ``t`` (default: the next one)."""
        return lr_factor(self.tau, self.t + 1 if t is None else t, self.horizon)

    def _before(self, optimizer, args, kwargs) -> None:
        self.t += 1
        d = divisor(self.tau, self.t, self.horizon)
        if d != 1.0:
            self._kept = [g["lr"] for g in optimizer.param_groups]
            for g in optimizer.param_groups:
                g["lr"] = g["lr"] / d

    def _after(self, optimizer, args, kwargs) -> None:
        if self._kept is not None:
            for g, lr in zip(optimizer.param_groups, self._kept):
                g["lr"] = lr
            self._kept = None

    def _save(self, optimizer, state_dict: dict) -> dict:
        state_dict[KEY] = {"t": self.t}
        return state_dict

    def _load(self, optimizer, state_dict: dict) -> dict:
        state_dict = dict(state_dict)
        saved = state_dict.pop(KEY, None)
        if saved is None:
            raise ValueError("the optimizer state being loaded was saved without PipeMare's learning-rate "
                             "correction (it has no update count t): resume with the correction the run was "
                             "written with (--lr-correction none)")
        self.t = int(saved["t"])
        return state_dict


def pipemare(optimizer: torch.optim.Optimizer, horizon: float, *, tau: int | None = None,
             stage=None) -> torch.optim.Optimizer:
    """``optimizer`` with PipeMare's correction over ``horizon`` updates, for delay ``tau`` or the
    ``stage``'s (a ``StageInfo``: ``stage.tau``); returns the same optimizer::

        optimizer=lambda p, stage: pipemare(torch.optim.AdamW(p, lr=1e-3), 7 * stage.updates_per_epoch,
                                            stage=stage)
    """
    if (tau is None) == (stage is None):
        raise TypeError("pipemare() takes exactly one of tau= (the delay in updates) or stage= (the StageInfo "
                        "a stage-aware factory receives)")
    PipeMareLR(optimizer, stage.tau if stage is not None else tau, horizon)
    return optimizer


def parse_correction(text: str) -> float | None:
    """``--lr-correction``: "none" -> None, "pipemare T" -> T (epochs, finite, > 0); else a ValueError."""
    words = str(text).split()
    if words == ["none"]:
        return None
    if words[:1] == ["pipemare"]:
        if len(words) != 2:
            raise ValueError(f"--lr-correction {text!r}: pipemare takes one number T, the epochs over which the "
                             f"correction fades, e.g. --lr-correction pipemare 7")
        try:
            T = float(words[1])
        except ValueError:
            T = math.nan
        if not 0 < T < math.inf:
            raise ValueError(f"--lr-correction pipemare {words[1]}: T must be a finite number of epochs > 0, "
                             f"e.g. --lr-correction pipemare 7")
        return T
    raise ValueError(f"unknown --lr-correction {text!r} (valid: none, pipemare T)")
