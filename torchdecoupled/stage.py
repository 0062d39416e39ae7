"""One stage: its layers, its optimizer and scheduler, and what it keeps for in-flight batches.

This is the only place compute happens; the simulator and the distributed engine both call it.

A delayed backward must differentiate the computation that produced the batch's output (spec, "What a
delayed backward differentiates"):

- ``stash``: the forward runs on a snapshot of the weights (``substitute.Slots``), so the
  in-place ``optimizer.step()`` of later ticks never touches the tensors autograd saved (PipeDream's
  weight stashing). Batches forwarded with the same weight version share one snapshot.
- ``recompute``: keep only the stage input; at B run the forward again with the current weights on
  copies of the BatchNorm buffers (running statistics move once per batch, at F) and with the same
  dropout masks (every forward of batch b draws from a generator seeded by (seed, stage, b)).
- ``reverse`` (PETRA): as ``recompute``, but a reversible stage (``reversible.is_reversible``) keeps
  no input: at B it rebuilds it from the output that the stage above sends back with the gradient, with
  the current weights and on copies of the BatchNorm buffers. Every gradient message is then the pair
  (activation, gradient); a non-reversible stage sends its stored input, the last stage the input it got.

Gradients are taken with ``torch.autograd.grad`` and summed into ``p.grad`` (ADL accumulates M of them);
``update()`` steps the optimizer and clears them, and the LR scheduler once per epoch or once per update.
A loss, an activation sent up, a buffer after F (BatchNorm's running statistics), a gradient sent down or a
parameter after U that is not finite raises ``NonFiniteError`` naming the stage, the batch, the tick and the
tensor (``finite.py``).

A stage's input and output are a Tensor or a pytree of tensors; ``boundary.py`` says what travels with
which gradient. The last stage's ``criterion(outputs, targets)`` may take any outputs and targets; the
sample count and accuracy follow ``evaluation.py``.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from .boundary import batch_size, detach_tree, grad_leaves, grad_tree, leaves, map_tensors, nbytes, pairs
from .boundary import require_grad, to_device
from .evaluation import accuracy_counts
from .finite import require_finite
from .methods import Method
from .precision import autocast, check_precision, eval_forward, to_boundary
from .reversible import is_reversible, rebuild_input
from .schedule import Schedule
from .substitute import Slots
from .stage_records import InFlight, Telemetry, saved_bytes, shapes_of, signature

SCHEDULER_INTERVALS = ("epoch", "step")


class Stage:
    def __init__(self, index: int, schedule: Schedule, method: Method, module: nn.Module,
                 optimizer: torch.optim.Optimizer, *, scheduler=None,
                 criterion: Callable | None = None, head: nn.Module | None = None,
                 predictor: Callable | None = None, seed: int = 0, batches_per_epoch: int = 1,
                 grad_sync: Callable[[list[torch.Tensor]], None] | None = None,
                 scheduler_interval: str = "epoch", precision: str = "float32"):
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(f"unknown scheduler_interval {scheduler_interval!r} (valid: "
                             f"{', '.join(SCHEDULER_INTERVALS)})")
        K = schedule.num_stages
        self.index, self.schedule, self.method = index, schedule, method
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.scheduler_interval = scheduler_interval  # "epoch": after an epoch's last gradient; "step": every U
        self.criterion = criterion if criterion is not None else nn.functional.cross_entropy
        self.head, self.predictor = head, predictor
        self.grad_sync = grad_sync  # replicas: average p.grad across the stage's data-parallel group
        self.seed, self.batches_per_epoch = seed, batches_per_epoch
        self.precision = precision  # "bf16": autocast forwards, bfloat16 boundaries (precision.py)
        self.is_last = index == K - 1
        self.is_local = schedule.family == "local" and not self.is_last
        self.sends_grad = index > 0 and schedule.family != "local"
        self.delayed = schedule.delay(index) > 0
        self.recompute = method.activations in ("recompute", "reverse") and self.delayed
        # PETRA ("reverse"): a gradient message is (the activation rebuilt above, its gradient); a delayed
        # reversible stage stores no input and rebuilds it from that activation (reversible.py)
        self.carries_input = method.activations == "reverse" and schedule.family != "local"
        self.reversible = self.carries_input and self.recompute and is_reversible(module)
        if self.carries_input and precision != "float32":
            raise ValueError(f"method {method.name!r} rebuilds stage inputs by subtraction, which {precision} rounds "
                             f"more at every stage: use precision 'float32'")
        self.shrink = method.beta if (not self.is_last and schedule.family != "local") else 1.0
        if self.is_local and head is None:
            raise ValueError(f"stage {index} of a local-learning method needs an auxiliary head")
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.slots = Slots(module)  # where a snapshot's or a recompute's tensors go
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.head_params = [p for p in head.parameters() if p.requires_grad] if head is not None else []
        head_names = [f"head.{n}" for n, p in head.named_parameters() if p.requires_grad] if head is not None else []
        self.param_names = [f"parameter {n!r}" for n in self.names + head_names]  # of params + head_params
        named = [(n, t) for n, t in module.named_buffers() if t.is_floating_point()]  # moved by F (BatchNorm)
        self.buffers, self.buffer_names = [t for _, t in named], [f"buffer {n!r}" for n, _ in named]
        self.num_updates = 0
        self.inflight: dict[int, InFlight] = {}
        self.telemetry = Telemetry()
        self._snapshot: tuple[int, list[torch.Tensor]] | None = None
        self._saved: dict[tuple, int] = {}  # input signature -> bytes its forward saves (stage_records.signature)
        self._sched_steps = 0
        self._last_backward = -1
        dev = self.params[0].device if self.params else torch.device("cpu")
        self.device = dev
        check_precision(precision, self.params[0].dtype if self.params else None)
        self._generators = [torch.default_generator] + (  # what _rng seeds and restores
            [torch.cuda.default_generators[dev.index or 0]] if dev.type == "cuda" else [])
        if self.recompute and hasattr(predictor, "attach"):
            predictor.attach(self)  # its optimizer hooks must see every update, also one before the first F

    # ---- helpers -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _rng(self, b: int):
        """Dropout masks of batch b depend on (seed, stage, b) only: equal in F and recompute, in one
        process or many."""
        seed = (self.seed * 1_000_003 + self.index * 7_919 + b) % (2**63)
        # what torch.random.fork_rng saves and restores, without its per-call checks (about 60 us a forward
        # on a CPU against 10); torch.manual_seed would also seed every backend
        states = [g.get_state() for g in self._generators]
        for g in self._generators:
            g.manual_seed(seed)
        try:
            yield
        finally:
            for g, state in zip(self._generators, states):
                g.set_state(state)

    def _call(self, x, weights: list[torch.Tensor] | None, buffers: dict | None = None):
        """The stage's forward (under bf16: autocast, and what goes up cast to bfloat16 in the graph)."""
        with autocast(self.precision, self.device):
            if weights is None and buffers is None:
                out = self.module(x)
            else:
                tensors = dict(zip(self.names, weights)) if weights is not None else {}
                if buffers:
                    tensors.update(buffers)
                with self.slots.substituted(tensors):
                    out = self.module(x)
        return out if self.is_last else to_boundary(out, self.precision)

    def _snapshot_params(self) -> list[torch.Tensor]:
        if self._snapshot is None or self._snapshot[0] != self.num_updates:
            snap = [p.detach().clone().requires_grad_(True) for p in self.params]
            self._snapshot = (self.num_updates, snap)
        return self._snapshot[1]

    def _track_bytes(self) -> None:
        now = self.stored_bytes
        t = self.telemetry
        t.peak_bytes = max(t.peak_bytes, now)
        t.epoch_peak_bytes = max(t.epoch_peak_bytes, now)

    @property
    def stored_bytes(self) -> int:
        snaps = {id(r.params): sum(t.nbytes for t in r.params) for r in self.inflight.values() if r.params}
        return sum(r.nbytes for r in self.inflight.values()) + sum(snaps.values())

    # ---- F, B, U -------------------------------------------------------------------------------
    def forward(self, b: int, x, y=None, x0: torch.Tensor | None = None):
        """Forward batch b (x: a Tensor or a pytree of tensors); return the activation to send up, detached,
        with the structure the module returned, or None at the last stage."""
        x = to_device(x, self.device)
        if self.recompute:
            weights = None
            if self.predictor is not None:
                weights = self.predictor(self, self.schedule.staleness(self.index, b))
            with torch.no_grad(), self._rng(b):
                out = self._call(x, weights)
            self._check_forward(b, out)
            kept = None if self.reversible else x  # a reversible stage rebuilds x at B (PETRA eq. 5)
            self.inflight[b] = InFlight(self.num_updates, kept, None, None, nbytes(kept))
            self._track_bytes()
            return out
        if self.sends_grad:
            x = require_grad(x)
        weights = self._snapshot_params() if self.delayed else None
        key = (signature(x), signature(y) if self.is_last or self.is_local else None, signature(x0))
        known = self._saved.get(key)  # what a forward saves, counted at the first of each signature
        with (saved_bytes(weights or self.params) if known is None else contextlib.nullcontext()) as saved, \
                self._rng(b):
            out = self._call(x, weights)
            root, send = out, detach_tree(out)
            if self.is_last:
                root, send = self._loss(b, out, y), None
            elif self.is_local:
                if not isinstance(out, torch.Tensor):
                    raise ValueError(f"stage {self.index} returns a {type(out).__name__}, but the auxiliary head of "
                                     f"a local-learning method takes a Tensor: cut where a Tensor crosses, or "
                                     f"use a method without heads")
                with autocast(self.precision, self.device):
                    root = self.head.loss(out, y.to(self.device), x0.to(self.device) if x0 is not None else None)
        self._check_forward(b, send, root if self.is_last or self.is_local else None)
        if known is None:
            for t in leaves(out):
                if isinstance(t, torch.Tensor):
                    saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            known = self._saved[key] = sum(saved.values())
        self.inflight[b] = InFlight(self.num_updates, x, root, weights, known)
        self._track_bytes()
        return send

    def _loss(self, b: int, out, y) -> torch.Tensor:
        y = to_device(y, self.device)
        try:
            with autocast(self.precision, self.device):
                loss = self.criterion(out, y)
        except (IndexError, RuntimeError, ValueError, TypeError) as e:  # e.g. a label outside [0, classes)
            raise ValueError(f"stage {self.index}: the criterion failed on batch {b} (outputs {shapes_of(out)}, targets "
                             f"{shapes_of(y)}): {type(e).__name__}: {e}") from None
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"stage {self.index}: the criterion returned {type(loss).__name__}, not a tensor: return "
                            f"the loss as a scalar tensor")
        correct, count = accuracy_counts(out, y) or (None, None)
        self.telemetry.losses.append((b, loss.detach(), correct, batch_size(y, out), count))
        return loss

    def backward(self, b: int, grad=None):
        """Backward batch b with the gradient received from above (None where the stage has its own loss;
        else the output's structure, a tensor at each floating leaf, None elsewhere; under PETRA the pair
        (output, gradient)); sum the parameter gradients into p.grad; return the gradient to send down in the
        input's structure (under PETRA the pair (input, gradient)), or None."""
        if b not in self.inflight:
            raise RuntimeError(f"stage {self.index}: backward of batch {b} without its forward")
        rec = self.inflight.pop(b)
        self.telemetry.staleness.append((b, self.num_updates - rec.version))
        self._last_backward = b
        if self.scheduler_interval == "epoch" and (b + 1) % self.batches_per_epoch == 0:
            self._sched_steps += 1
        x, root, weights = rec.x, rec.root, rec.params
        if self.carries_input and grad is not None:  # PETRA: (x~ of the output, its gradient)
            above, grad = grad
            if self.reversible:
                x = self._rebuild(b, above)
        if self.recompute:  # re-run the forward with the current weights, BN buffers untouched
            x = require_grad(x) if self.sends_grad else detach_tree(x)
            buffers = {n: t.clone() for n, t in self.module.named_buffers()}
            with self._rng(b):
                root = self._call(x, None, buffers)
        roots, grad_out = [root], None  # the stage's own loss
        if grad is not None:
            grad = to_device(grad, self.device)
            if self.shrink != 1.0:  # FDG gradient shrinking
                grad = map_tensors(lambda g: g * self.shrink, grad)
            roots, grad_out = pairs(root, grad)
        params = (weights if weights is not None else self.params) + self.head_params
        xs = grad_leaves(x) if self.sends_grad else []
        if not (roots and params + xs):  # nothing to differentiate, or nothing to differentiate for
            sent = [None] * len(xs)
        elif weights is None:  # into p.grad as a plain loop's backward does (ADL: summed into what is there)
            torch.autograd.backward(roots, grad_out, inputs=params + xs)
            sent = [t.grad for t in xs]
        else:  # the gradients of the snapshot, summed into the parameters' p.grad
            grads = torch.autograd.grad(roots, params + xs, grad_out, allow_unused=True)
            for p, g in zip(self.params + self.head_params, grads[: len(params)]):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad += g
            sent = list(grads[len(params):])
        self._track_bytes()
        if not self.sends_grad:
            return None
        self._check(sent, "backward", b, self.schedule.backward_tick(self.index, b),
                    ["the gradient it sends down"] * len(sent))
        sent = grad_tree(x, sent)
        return (detach_tree(x), sent) if self.carries_input else sent

    def _rebuild(self, b: int, y):
        """PETRA eq. 5: the input of batch b rebuilt from the output y with the current weights, BatchNorm
        on copies of the buffers (batch statistics), the dropout masks of batch b."""
        buffers = {n: t.clone() for n, t in self.module.named_buffers()}
        with torch.no_grad(), self._rng(b):
            return rebuild_input(self.module, to_device(y, self.device), buffers)

    def update(self) -> None:
        """Apply the summed gradients (with ADL's warm-up factor), clear them, step the LR schedule."""
        if self.grad_sync is not None:
            self.grad_sync(self.params + self.head_params)
        factor = self._warmup_factor()
        if factor != 1.0:
            lrs = [g["lr"] for g in self.optimizer.param_groups]
            for g in self.optimizer.param_groups:
                g["lr"] = g["lr"] * factor
        self.optimizer.step()
        if factor != 1.0:
            for g, lr in zip(self.optimizer.param_groups, lrs):
                g["lr"] = lr
        b = self._last_backward  # U follows the B of b in its tick
        tick = self.schedule.backward_tick(self.index, b)
        self._check(self.params + self.head_params, "update", b, tick, self.param_names)
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        if self.scheduler_interval == "step":
            self._sched_steps += 1
        while self._sched_steps:
            self._sched_steps -= 1
            if self.scheduler is not None:
                self.scheduler.step()

    def _check_forward(self, b: int, send, loss: torch.Tensor | None = None) -> None:
        """The loss (if any), the activation sent up and the buffers, after the F of batch b."""
        sent = [t for t in leaves(send) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        tensors, names = sent + self.buffers, ["the activation it sends up"] * len(sent) + self.buffer_names
        if loss is not None:
            tensors, names = [loss] + tensors, ["the auxiliary head's loss" if self.is_local else "the loss"] + names
        self._check(tensors, "forward", b, self.schedule.forward_tick(self.index, b), names)

    def _check(self, tensors: list, op: str, b: int, tick: int, names: list[str]) -> None:
        require_finite(tensors, lambda i: f"stage {self.index}: after the {op} of batch {b} (tick {tick}), {names[i]}",
                       self._lr)

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"] if self.optimizer.param_groups else 0.0

    def _warmup_factor(self) -> float:
        w = self.method.warmup_epochs
        if w <= 0:
            return 1.0
        progress = (self._last_backward + 1) / self.batches_per_epoch
        return 0.01 + 0.99 * min(1.0, progress / w)

    # ---- MAN's parameter messages (methods/man.py) ---------------------------------------------
    def param_message(self) -> list[torch.Tensor]:
        """Copies of this stage's first layer's parameters, sent down after U (``heads.man.first_layer``)."""
        from .heads.man import first_layer_params
        return [p.detach().clone() for p in first_layer_params(self.module)]

    def param_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """(shape, dtype) of each tensor of ``param_message``."""
        from .heads.man import first_layer_params
        return [(tuple(p.shape), p.dtype) for p in first_layer_params(self.module)]

    def receive_params(self, tensors) -> None:
        """The stage above's first-layer parameters, just before an F: the head's EMA takes them."""
        if not hasattr(self.head, "receive_next"):
            raise TypeError(f"stage {self.index}: method {self.method.name!r} sends the next stage's parameters to "
                            f"the auxiliary head, but {type(self.head).__name__} has no receive_next(params): use "
                            f"a MAN head (heads.man.MANHead, head 'man_dgl' or 'man_infopro')")
        self.head.receive_next(tensors)

    # ---- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x):
        """Plain forward in eval mode with the current weights (x: a Tensor or a pytree); under bf16 as
        in training, the last stage's outputs in float32 (``precision.eval_forward``)."""
        return eval_forward(self.module, to_device(x, self.device), self.precision, self.device, self.is_last)

    def collect(self, epoch: int) -> dict:
        """Pop the telemetry of batches of the given epoch (and earlier): staleness (``tau_max``: the most
        updates any of these batches crossed between its F and its gradient, PACI's Delta), peak stored bytes, lr,
        and at a stage with a loss ``loss_sum`` (weighted by samples) and ``samples``, plus ``correct`` and
        ``targets`` (their count) where accuracy applies."""
        t, n = self.telemetry, self.batches_per_epoch
        taus = [tau for b, tau in t.staleness if b // n <= epoch]
        t.staleness = [(b, tau) for b, tau in t.staleness if b // n > epoch]
        losses = [r for r in t.losses if r[0] // n <= epoch]
        t.losses = [r for r in t.losses if r[0] // n > epoch]
        out = {
            "tau_mean": sum(taus) / len(taus) if taus else 0.0,
            "tau_max": max(taus) if taus else 0,
            "peak_bytes": t.epoch_peak_bytes,
            "lr": self._lr(),
        }
        if losses:
            out["loss_sum"] = float(sum(r[1].item() * r[3] for r in losses))
            out["samples"] = sum(r[3] for r in losses)
            scored = [r for r in losses if r[2] is not None]
            if scored:
                out["correct"] = int(sum(int(r[2]) for r in scored))
                out["targets"] = sum(r[4] for r in scored)
        t.epoch_peak_bytes = self.stored_bytes
        return out

