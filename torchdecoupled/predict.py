"""Weight prediction (DTRP): the forward of batch b runs on an estimate of the weights its recompute will use.

Peng, Xu, Lin, Weng, Yang, Zhuang. "Decoupled neural network training with re-computation and weight
prediction." PLOS ONE 2023. Under recomputation a stage forwards batch b with its weights w at tick
t_F and, s updates later (s = the staleness ``Schedule.staleness(k, b)``), recomputes that forward with
its then-current weights to backpropagate. The activation sent up and the recomputed one differ unless
the forward already used those future weights; a predictor estimates them::

    none      w_hat = w                                   (DSP: no prediction)
    momentum  w_hat = w - s * lr * v                       (SpecTrain, Chen et al. 2018)
    delta     w_hat = w + s * (w - w_prev)                 (the last update, extrapolated)

``v`` per optimizer (what ``momentum`` does, decided here):

- SGD with momentum: v = the optimizer's ``momentum_buffer`` (weight decay and dampening included; with
  nesterov the buffer, not the nesterov step). With a constant lr and no nesterov, lr * v is exactly the
  last step, so ``momentum`` and ``delta`` then coincide.
- SGD without momentum: v = the direction of the last step, grad + weight_decay * w (sign flipped under
  maximize), recorded by an optimizer step pre-hook: s more steps of the last gradient.
- Adam, AdamW: v = Adam's bias-corrected step direction exp_avg_hat / (sqrt(exp_avg_sq_hat) + eps)
  (max_exp_avg_sq under amsgrad), plus weight_decay * w for decoupled weight decay (AdamW). This
  assumes the moments stay as they are for s steps; a one-time warning says so.
- any other optimizer: ValueError at the first forward; use ``delta``, which works with every optimizer.

Before the stage's first update there is nothing to extrapolate and every predictor returns None (the
forward uses w). A prediction for s = 0 is w itself (bit for bit, so s = 0 behaves as ``none``).

Protocol: a predictor is any callable ``predictor(stage, s) -> list[Tensor] | None`` returning one tensor
per ``stage.params`` (None: use the current weights). The built-ins hook the optimizer of the stage they
are attached to (``Stage`` calls ``attach`` when it is built, so they see every update), so build one per
stage: ``make_predictor(name)``. Their state (``delta``: one copy
of the weights; ``momentum`` under plain SGD: one copy of the last step) is not counted in
``Stage.stored_bytes``, which counts in-flight batches only; ``state_dict()`` / ``load_state_dict()`` carry
it through a checkpoint.
"""
from __future__ import annotations

import math
import warnings

import torch


class Predictor:
    """Base class: bound to one stage (``Stage`` attaches it when built; else the first call does), it counts
    the stage's optimizer steps through step hooks."""

    name = "base"

    def __init__(self):
        self.stage = None
        self.steps = 0
        self._handles: list = []

    def __call__(self, stage, s: int) -> list[torch.Tensor] | None:
        if self.stage is None:
            self.attach(stage)
        elif stage is not self.stage:
            raise ValueError(f"predictor {self.name!r} is bound to stage {self.stage.index} but was called by "
                             f"stage {stage.index}: build one per stage with make_predictor({self.name!r})")
        if s < 0:
            raise ValueError(f"staleness must be >= 0, got {s}")
        if self.steps == 0:
            return None
        with torch.no_grad():
            return self.predict(stage, s)

    def attach(self, stage) -> None:
        self.stage = stage
        self._handles.append(stage.optimizer.register_step_post_hook(self._count))
        self._handles.append(stage.optimizer.register_step_pre_hook(self._before_step))

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume bit for bit: the step count and the remembered step/weights."""
        saved = self._saved()
        return {"steps": self.steps, "tensors": None if saved is None else [t.clone() for t in saved]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self._restore(state["tensors"])

    def _saved(self) -> list[torch.Tensor] | None:
        return None

    def _restore(self, tensors: list[torch.Tensor] | None) -> None:
        pass

    def remove(self) -> None:
        """Detach the optimizer hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _count(self, optimizer, args, kwargs) -> None:
        self.steps += 1

    def _before_step(self, optimizer, args, kwargs) -> None:
        pass

    def predict(self, stage, s: int) -> list[torch.Tensor] | None:
        raise NotImplementedError


class NoPrediction(Predictor):
    """w_hat = w: the forward uses the current weights (DSP)."""

    name = "none"

    def __call__(self, stage, s: int) -> None:
        return None


def _groups(optimizer, params) -> list[dict]:
    """The optimizer param group of each of the stage's parameters."""
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in where]
    if missing:
        raise ValueError(f"the stage's optimizer does not hold parameters {missing} of the stage: pass all "
                         f"stage.params to its optimizer")
    return [where[id(p)] for p in params]


class MomentumPredictor(Predictor):
    """w_hat = w - s * lr * v; v per optimizer as the module docstring says (SpecTrain-style)."""

    name = "momentum"

    def __init__(self):
        super().__init__()
        self._last: list[torch.Tensor] | None = None  # plain SGD: the last step direction

    def _saved(self):
        return self._last

    def _restore(self, tensors):
        self._last = tensors

    def attach(self, stage) -> None:
        opt = stage.optimizer
        if isinstance(opt, torch.optim.Adam):  # AdamW is an Adam
            warnings.warn(f"predictor 'momentum' with {type(opt).__name__}: predicts w - s * lr * u with "
                          f"Adam's bias-corrected step direction u = m_hat / (sqrt(v_hat) + eps) (+ wd * w "
                          f"when the weight decay is decoupled), assuming the moments stay fixed for s "
                          f"steps; predictor 'delta' extrapolates the actual last step instead",
                          stacklevel=3)
        elif not isinstance(opt, torch.optim.SGD):
            raise ValueError(f"predictor 'momentum' supports SGD, Adam and AdamW (got {type(opt).__name__}); "
                             f"use predictor 'delta', which extrapolates the last step of any optimizer")
        _groups(opt, stage.params)  # fail now if a parameter is missing
        super().attach(stage)

    def _before_step(self, optimizer, args, kwargs) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            return
        groups = _groups(optimizer, self.stage.params)  # looked up each time: load_state_dict replaces them
        if all(g["momentum"] != 0 for g in groups):
            return
        last = []
        for p, g in zip(self.stage.params, groups):
            d = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            if g["maximize"]:
                d = -d
            if g["weight_decay"] != 0:
                d = d.add(p.detach(), alpha=float(g["weight_decay"]))
            last.append(d)
        self._last = last

    def predict(self, stage, s: int) -> list[torch.Tensor]:
        adam = isinstance(stage.optimizer, torch.optim.Adam)
        out = []
        for i, (p, g) in enumerate(zip(stage.params, _groups(stage.optimizer, stage.params))):
            v = self._adam_direction(p, g) if adam else self._sgd_direction(i, p, g)
            out.append(p.detach().clone() if v is None else torch.add(p.detach(), v, alpha=-s * float(g["lr"])))
        return out

    def _sgd_direction(self, i: int, p: torch.Tensor, g: dict) -> torch.Tensor | None:
        if g["momentum"] != 0:
            return self.stage.optimizer.state.get(p, {}).get("momentum_buffer")
        return None if self._last is None else self._last[i]

    def _adam_direction(self, p: torch.Tensor, g: dict) -> torch.Tensor | None:
        st = self.stage.optimizer.state.get(p, {})
        if "exp_avg" not in st:
            return None
        beta1, beta2 = (float(b) for b in g["betas"])
        step = float(st["step"])
        sq = st["max_exp_avg_sq"] if g["amsgrad"] else st["exp_avg_sq"]
        denom = (sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(g["eps"])
        u = st["exp_avg"] / (1 - beta1 ** step) / denom
        if g.get("decoupled_weight_decay", False) and g["weight_decay"] != 0:
            u = u.add(p.detach(), alpha=float(g["weight_decay"]))
        return u


class DeltaPredictor(Predictor):
    """w_hat = w + s * (w - w_prev), w_prev = the weights before the last update; any optimizer."""

    name = "delta"

    def __init__(self):
        super().__init__()
        self._prev: list[torch.Tensor] | None = None

    def _saved(self):
        return self._prev

    def _restore(self, tensors):
        self._prev = tensors

    def _before_step(self, optimizer, args, kwargs) -> None:
        if self._prev is None:
            self._prev = [p.detach().clone() for p in self.stage.params]
        else:
            for w, p in zip(self._prev, self.stage.params):
                w.copy_(p.detach())

    def predict(self, stage, s: int) -> list[torch.Tensor]:
        return [torch.add(p.detach(), p.detach() - w, alpha=s) for p, w in zip(stage.params, self._prev)]


PREDICTORS = {"none": NoPrediction, "momentum": MomentumPredictor, "delta": DeltaPredictor}


def make_predictor(name: str) -> Predictor:
    """A fresh predictor for one stage."""
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r} (valid: {', '.join(sorted(PREDICTORS))})")
    return PREDICTORS[name]()


__all__ = ["PREDICTORS", "Predictor", "make_predictor"]
