"""Checkpoints that resume exactly, in the middle of a streaming pipeline.

At an epoch boundary a decoupled pipeline is not empty: stage k still holds up to 2(K-1-k)+1 batches in
flight and messages wait in the mailboxes. A checkpoint stores, per stage, the weights and buffers, the
optimizer and scheduler state, the update counter, and for every in-flight batch its stage input, the
weight version and (stash) the weight snapshot its forward used, and the gradients summed so far in an
unfinished accumulation window (ADL); plus the undelivered messages and the
metrics so far. On resume the stashed graphs are rebuilt by running the forward again on the saved
input with the saved snapshot, on copies of the BatchNorm buffers and with the batch's own dropout
generator: in train mode that forward gives the same output bits, so the run continues bit for bit.
"""
from __future__ import annotations

import os

import torch

from .stage import InFlight, Stage
from .transport import LocalTransport

FORMAT = 1


def _stage_state(s: Stage) -> dict:
    snaps: dict[int, list[torch.Tensor]] = {}
    records = {}
    for b, r in s.inflight.items():
        if r.params is not None:
            snaps.setdefault(r.version, [p.detach().clone() for p in r.params])
        x = r.x.detach().clone() if r.x is not None else None
        records[b] = {"version": r.version, "x": x, "stash": r.params is not None, "nbytes": r.nbytes}
    return {
        "module": s.module.state_dict(), "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict() if s.scheduler is not None else None,
        "head": s.head.state_dict() if s.head is not None else None,
        "predictor": s.predictor.state_dict() if hasattr(s.predictor, "state_dict") else None,  # DTRP
        "num_updates": s.num_updates, "sched_steps": s._sched_steps, "last_backward": s._last_backward,
        "peak_bytes": s.telemetry.peak_bytes, "inflight": records, "snapshots": snaps,
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in s.params + s.head_params],
    }


def save(path: str, stages: list[Stage], transport: LocalTransport, tick: int, records: list[dict],
         config: dict) -> None:
    state = {"format": FORMAT, "tick": tick, "records": records, "config": config,
             "stages": [_stage_state(s) for s in stages], "messages": dict(transport.box)}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint


def _rebuild(s: Stage, b: int, rec: dict, snaps: dict) -> InFlight:
    x = rec["x"]
    if s.recompute:
        return InFlight(rec["version"], x, None, None, rec["nbytes"])
    weights = snaps[rec["version"]] if rec["stash"] else None
    if s.sends_grad:
        x = x.detach().requires_grad_(True)
    buffers = {n: t.clone() for n, t in s.module.named_buffers()}
    with s._rng(b):
        root = s._call(x, weights, buffers)
    return InFlight(rec["version"], x, root, weights, rec["nbytes"])


def load(path: str, stages: list[Stage], transport: LocalTransport) -> tuple[int, list[dict]]:
    """Restore stages and mailboxes; returns (the tick the checkpoint was taken after, metrics so far)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}: pass the run directory of a run started with "
                                f"--checkpoint (it holds checkpoint.pt)")
    state = torch.load(path, weights_only=False)
    if state.get("format") != FORMAT or len(state["stages"]) != len(stages):
        raise ValueError(f"checkpoint {path!r} has {len(state['stages'])} stages (format {state.get('format')}); "
                         f"this run has {len(stages)}: resume with the same --stages and method")
    for s, st in zip(stages, state["stages"]):
        s.module.load_state_dict(st["module"])
        s.optimizer.load_state_dict(st["optimizer"])
        if s.scheduler is not None and st["scheduler"] is not None:
            s.scheduler.load_state_dict(st["scheduler"])
        if s.head is not None and st["head"] is not None:
            s.head.load_state_dict(st["head"])
        if st.get("predictor") is not None:
            s.predictor.load_state_dict(st["predictor"])
        s.num_updates, s._sched_steps, s._last_backward = st["num_updates"], st["sched_steps"], st["last_backward"]
        s.telemetry.peak_bytes = st["peak_bytes"]
        for p, g in zip(s.params + s.head_params, st["grads"]):  # ADL's partly accumulated window
            p.grad = g
        snaps = {v: [p.requires_grad_(True) for p in ps] for v, ps in st["snapshots"].items()}
        if snaps:
            v = max(snaps)
            s._snapshot = (v, snaps[v])
        s.inflight = {b: _rebuild(s, b, rec, snaps) for b, rec in sorted(st["inflight"].items())}
    transport.box = dict(state["messages"])
    return state["tick"], state["records"]
