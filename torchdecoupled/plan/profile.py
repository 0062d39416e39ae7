"""What each stage of a cut costs under a method: F, B, U seconds, messages, all-reduce, and memory.

Per stage holding layers[a:b] (sums over its layers; spec: shared/spec/methods.md):

    F = sum f                  + the auxiliary head's forward (local methods, stages k < K-1)
                               + one weight prediction, costed as one U (DTRP, stages with a delay)
    B = sum b                  + sum f again where the stage recomputes (FR, DSP, DTRP; stages with a delay)
                               + the head's backward (local methods)
    U = sum u (one SGD step)   + before it, the ring all-reduce of the stage's gradients over D replicas
    message up = the output of layers[b-1]; the gradient down has the same size (none for local methods)
    + the host CPU of each message (``link.cpu_per_byte`` x bytes, at both ends; 0 on device links): F pays for
      the activation it receives and the one it sends, B for the gradients; U for the all-reduce's bytes

PETRA (activations "reverse") is costed as a recompute plus one more forward for the inverse, and its stored
inputs as a recompute's: an upper bound, since a reversible stage keeps none (the costs do not say which layers
are reversible). MAN's parameter message is not timed (one layer's parameters per step).
ADL's accumulation needs nothing here: its Schedule has fewer U actions. Memory per stage, as
``Stage.telemetry.peak_bytes`` counts stored bytes (docs/memory.md), by replaying the Schedule's F, B and U
(``stored_peak``): with ``stash`` each in-flight batch keeps its saved activations and the weight version it
used (batches forwarded between the same two updates share one); with ``recompute`` only its stage input, plus
one live graph while it backpropagates; a stage without a delay keeps one batch's graph from F to B.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..methods import Method
from ..schedule import Schedule
from .costs import Costs, stage_input_bytes, stage_saved_bytes
from .links import Link

OPTIMIZER_COPIES = {"sgd": 1, "adam": 2, "sgd-nomomentum": 0}  # state tensors per trainable parameter


@dataclass(frozen=True)
class StageCost:
    work: dict            # {"F": s, "B": s, "U": s}
    allreduce: float      # seconds before each U
    msg_bytes: int        # activation sent up
    saved: int            # stored bytes of one batch with its graph
    inputs: int           # stage input bytes of one batch
    param_bytes: int
    trainable_bytes: int
    delayed: bool
    recompute: bool


def edges(boundaries, n: int) -> list[tuple[int, int]]:
    e = [0, *boundaries, n]
    return list(zip(e, e[1:]))


def stage_costs(costs: Costs, method: Method, boundaries, link: Link, replicas: int = 1) -> list[StageCost]:
    spans = edges(boundaries, len(costs.layers))
    K = len(spans)
    sched = Schedule(method.family, K, 1, method.order, method.accumulate)
    out = []
    for k, (a, b) in enumerate(spans):
        L = costs.layers[a:b]
        f, bw, u = sum(c.forward_s for c in L), sum(c.backward_s for c in L), sum(c.update_s for c in L)
        delayed = sched.delay(k) > 0
        recompute = method.activations in ("recompute", "reverse") and delayed  # reverse: PETRA
        saved = stage_saved_bytes(costs, a, b, last=k == K - 1)
        if method.family == "local" and k < K - 1:
            h = _head(costs, method.head, b - 1)
            f, bw, saved = f + h["forward_s"], bw + h["backward_s"], saved + h["saved_bytes"]
        F, B = f + (u if method.predictor != "none" and recompute else 0.0), bw + (f if recompute else 0.0)
        if method.activations == "reverse" and delayed:  # PETRA rebuilds its input first: an inverse ~ one F
            B += f
        trainable = sum(c.trainable_bytes for c in L)
        cpu = link.cpu_per_byte
        if cpu:
            down = costs.layers[a - 1].out_bytes if k > 0 else 0   # the activation in, the gradient out
            up = L[-1].out_bytes if k < K - 1 else 0               # the activation out, the gradient in
            F += cpu * (down + up)
            B += cpu * (down + up) if method.family != "local" else 0.0
            u += cpu * 2 * link.ring_bytes(trainable, replicas)
        out.append(StageCost({"F": F, "B": B, "U": u}, link.allreduce(trainable, replicas), L[-1].out_bytes, saved,
                             stage_input_bytes(costs, a), sum(c.param_bytes for c in L), trainable, delayed, recompute))
    return out


def _head(costs: Costs, name: str, layer: int) -> dict:
    heads = costs.heads.get(name)
    if not heads:
        have = ", ".join(sorted(costs.heads)) or "none"
        raise ValueError(f"local learning needs the cost of its auxiliary head {name!r} after each layer, and the "
                         f"costs hold none for it (heads measured: {have}); measure the costs here with "
                         f"heads=({name!r},) (the CLI does so for local methods)")
    return heads[layer]


def stored_peak(schedule: Schedule, k: int, sc: StageCost) -> tuple[int, int, int]:
    """Replay stage k's actions: (peak stored bytes, in-flight batches then, weight versions then), counted
    after every F and B as Stage._track_bytes does."""
    inflight: dict[int, int] = {}
    updates, best = 0, (0, 0, 0)
    for t in range(schedule.num_ticks):
        for a in schedule.actions(t, k):
            if a.op == "U":
                updates += 1
                continue
            if a.op == "F":
                inflight[a.batch] = updates
            else:
                inflight.pop(a.batch)
            versions = len(set(inflight.values())) if sc.delayed and not sc.recompute else 0
            per = sc.inputs if sc.recompute else sc.saved
            now = len(inflight) * per + versions * sc.trainable_bytes
            if now > best[0]:
                best = (now, len(inflight), versions)
    return best


def memory(schedule: Schedule, stages: list[StageCost], optimizer: str = "sgd") -> list[dict]:
    """Per stage, bytes: weights, gradients, optimizer state, stashed weight versions, activations (or stored
    inputs), the live graph of a recompute, the peak stored (as Stage.telemetry counts) and the total."""
    if optimizer not in OPTIMIZER_COPIES:
        raise ValueError(f"unknown optimizer {optimizer!r} (valid: {', '.join(OPTIMIZER_COPIES)})")
    out = []
    for k, sc in enumerate(stages):
        peak, held, versions = stored_peak(schedule, k, sc)
        stash = versions * sc.trainable_bytes
        row = {"weights": sc.param_bytes, "grads": sc.trainable_bytes,
               "optimizer": OPTIMIZER_COPIES[optimizer] * sc.trainable_bytes, "stashed_weights": stash,
               "activations": peak - stash, "live_graph": sc.saved if sc.recompute else 0, "stored": peak,
               "held": held, "versions": versions}
        row["total"] = sum(row[key] for key in ("weights", "grads", "optimizer", "stored", "live_graph"))
        out.append(row)
    return out
