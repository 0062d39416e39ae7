"""Checkpoints that resume exactly, in the middle of a streaming pipeline, in either engine.

At an epoch boundary a decoupled pipeline is not empty: stage k still holds up to 2(K-1-k)+1 batches in
flight and messages wait in the mailboxes. A checkpoint stores, per stage, the weights and buffers, the
optimizer and scheduler state, the update counter, and for every in-flight batch its stage input, the
weight version and (stash) the weight snapshot its forward used, and the gradients summed so far in an
unfinished accumulation window (ADL); plus the undelivered messages and the metrics so far. On resume
the stashed graphs are rebuilt by running the forward again on the saved input with the saved snapshot,
on copies of the BatchNorm buffers and with the batch's own dropout generator: in train mode that forward
gives the same output bits, so the run continues bit for bit.

One file, the same for both engines: ``replicas[r]`` holds replica r's pipeline, ``{"stages": [state of
stage k], "messages": {key: tensor}}``; the simulator writes one replica, the distributed engine D
(``engines/dist_checkpoint.py``). So a checkpoint of a simulator run resumes under ``--engine dist`` and
the other way round (D = 1). A checkpoint resumes only the run that wrote it: ``check_config`` refuses
another method, model, seed, batch size ... with the values and the fix. The checkpoint after the last
epoch holds a drained pipeline; ``resume`` says where a run continues it (nothing left, or more epochs).

The file (``checkpoint_file.py``) is sealed with a SHA-256 over its content and read with
``weights_only=True``: ``read`` refuses a damaged, truncated, foreign or crafted file in one line before
anything is restored. Files of formats 1 and 2 (written before the checksum) are read with a warning.

A run directory also gets ``model.pt`` (``save_model``): the final weights alone, for use without us.
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import torch
from torch import nn
from torch.utils._pytree import tree_map

from . import checkpoint_file
from .boundary import clone_tree, require_grad
from .methods import get_method
from .stage import InFlight, Stage
from .transport import LocalTransport

FORMAT = 3  # 3: sealed with a SHA-256 (checkpoint_file); 2: without; 1: one replica, no cut points
FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"  # a run directory's final weights (save_model)
# what the saved computation depends on; the partition is compared as cut points (check_boundaries)
MUST_MATCH = ("method", "stages", "replicas", "dataset", "model", "model_opts", "batch_size", "optimizer",
              "lr", "momentum", "weight_decay", "lr_schedule", "milestones", "seed", "dtype", "precision", "context",
              "lr_warmup", "lr_correction")
MISSING = {"precision": "float32", "context": 64, "lr_warmup": 0.05, "lr_correction": "none"}  # in checkpoints older than these options


def in_dir(directory: str) -> str:
    """The checkpoint file of a run directory."""
    return os.path.join(directory, FILE)


# ---- one stage ------------------------------------------------------------------------------------
def stage_state(s: Stage) -> dict:
    snaps: dict[int, list[torch.Tensor]] = {}
    records = {}
    for b, r in s.inflight.items():
        if r.params is not None:
            snaps.setdefault(r.version, [p.detach().clone() for p in r.params])
        x = clone_tree(r.x)  # a Tensor or a pytree of them
        records[b] = {"version": r.version, "x": x, "stash": r.params is not None, "nbytes": r.nbytes}
    return {
        "module": s.module.state_dict(), "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict() if s.scheduler is not None else None,
        "head": s.head.state_dict() if s.head is not None else None,
        "predictor": s.predictor.state_dict() if hasattr(s.predictor, "state_dict") else None,  # DTRP
        "num_updates": s.num_updates, "sched_steps": s._sched_steps, "last_backward": s._last_backward,
        "peak_bytes": s.telemetry.peak_bytes, "inflight": records, "snapshots": snaps,
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in s.params + s.head_params],
        # telemetry of batches whose epoch is not reported yet: the next epoch record comes out the same
        "staleness": list(s.telemetry.staleness), "losses": list(s.telemetry.losses),
    }


def _rebuild(s: Stage, b: int, rec: dict, snaps: dict) -> InFlight:
    x = rec["x"]
    if s.recompute:
        return InFlight(rec["version"], x, None, None, rec["nbytes"])
    weights = snaps[rec["version"]] if rec["stash"] else None
    if s.sends_grad:
        x = require_grad(x)
    buffers = {n: t.clone() for n, t in s.module.named_buffers()}
    with s._rng(b):
        root = s._call(x, weights, buffers)
    return InFlight(rec["version"], x, root, weights, rec["nbytes"])


def restore_stage(s: Stage, st: dict) -> None:
    s.module.load_state_dict(st["module"])
    s.optimizer.load_state_dict(st["optimizer"])
    if s.scheduler is not None and st["scheduler"] is not None:
        s.scheduler.load_state_dict(st["scheduler"])
    if s.head is not None and st["head"] is not None:
        s.head.load_state_dict(st["head"])
    if st.get("predictor") is not None:
        s.predictor.load_state_dict(st["predictor"])
    s.num_updates, s._sched_steps, s._last_backward = st["num_updates"], st["sched_steps"], st["last_backward"]
    for p, g in zip(s.params + s.head_params, st["grads"]):  # ADL's partly accumulated window
        p.grad = g
    snaps = {v: [p.requires_grad_(True) for p in ps] for v, ps in st["snapshots"].items()}
    if snaps:
        v = max(snaps)
        s._snapshot = (v, snaps[v])
    s.inflight = {b: _rebuild(s, b, rec, snaps) for b, rec in sorted(st["inflight"].items())}
    t = s.telemetry
    t.peak_bytes, t.epoch_peak_bytes = st["peak_bytes"], s.stored_bytes  # as Stage.collect left it
    t.staleness = list(st.get("staleness", []))
    # (b, loss, correct, n) in checkpoints written before accuracy became optional: n targets
    t.losses = [r if len(r) == 5 else (*r, r[3]) for r in st.get("losses", [])]


# ---- the file -------------------------------------------------------------------------------------
def make(tick: int, records: list[dict], config: dict, replicas: list[dict], boundaries=None,
         batches_per_epoch: int | None = None, run: tuple[int, int, bool] = (0, 0, False)) -> dict:
    """The checkpoint of the state after ``tick``; ``replicas[r] = {"stages": [...], "messages": {...}}``;
    ``run``: (epochs of the run, the epoch its schedule started at, whether ``tick`` is its last: see
    ``resume``)."""
    epochs, first_epoch, finished = run
    return {"format": FORMAT, "tick": tick, "records": records, "config": dict(config),
            "boundaries": None if boundaries is None else list(boundaries),
            "batches_per_epoch": batches_per_epoch, "epochs": epochs, "first_epoch": first_epoch,
            "finished": finished, "replicas": replicas}


def write(path: str, state: dict) -> None:
    """``state`` (``make``), sealed with its SHA-256, atomically: a crash (or a kill) while writing leaves the
    previous checkpoint as it was, and no temporary file."""
    checkpoint_file.save(path, checkpoint_file.seal(state))


def save(path: str, stages: list[Stage], transport: LocalTransport, tick: int, records: list[dict],
         config: dict, boundaries=None, batches_per_epoch: int | None = None,
         run: tuple[int, int, bool] = (0, 0, False)) -> None:
    """The simulator's checkpoint: every stage, and the mailbox, after ``tick`` (``run``: see ``make``)."""
    part = {"stages": [stage_state(s) for s in stages], "messages": dict(transport.box)}
    write(path, make(tick, records, config, [part], boundaries, batches_per_epoch, run))


def save_model(directory: str, model) -> str:
    """``directory/model.pt``: the whole model's state_dict (an nn.Module, or the list of blocks a Pipeline
    took), CPU tensors in a plain dict, loadable without torchdecoupled:
    ``model.load_state_dict(torch.load(path, weights_only=True))``. Returns the path."""
    if not isinstance(model, nn.Module):
        model = nn.Sequential(*model)
    path = os.path.join(directory, MODEL_FILE)
    checkpoint_file.save(path, {name: t.detach().cpu() for name, t in model.state_dict().items()})
    return path


def read(path: str, map_location=None) -> dict:
    """The checkpoint at ``path``, memory-mapped, its SHA-256 verified (which reads the whole file once; a
    process restores only its own parts); a ValueError of one line if it is not a sound checkpoint."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}: pass the run directory of a run started with "
                                f"--checkpoint (it holds {FILE})")
    state = checkpoint_file.load(path, map_location)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt is None:
        what = f"a dict with keys {sorted(map(str, state))[:6]}" if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path!r} is not a torchdecoupled checkpoint (it holds {what}): pass the run directory "
                         f"of a run started with --checkpoint (it holds {FILE})")
    if fmt == FORMAT or checkpoint_file.KEY in state:  # (a format 3 whose number changed fails the check)
        return checkpoint_file.verify(state, path)
    if fmt not in (1, 2):
        raise ValueError(f"checkpoint {path!r} has format {fmt!r}; this version reads formats 1 to {FORMAT}: resume "
                         f"it with the torchdecoupled that wrote it")
    warnings.warn(f"checkpoint {path!r} has format {fmt}, written before checkpoints had a checksum: it is read "
                  f"without one (a damaged file may go unnoticed)", stacklevel=2)
    if fmt == 1:  # one pipeline, no cut points
        state["replicas"] = [{"stages": state.pop("stages"), "messages": state.pop("messages")}]
    return state


def map_tensors(fn, obj):
    """``obj`` (nested dicts, lists, tuples) with ``fn`` applied to every tensor in it."""
    return tree_map(lambda v: fn(v) if isinstance(v, torch.Tensor) else v, obj)


def copied(obj):
    """``obj`` with every tensor copied out of the memory-mapped file."""
    return map_tensors(torch.Tensor.clone, obj)


def restore(state: dict, stages: list[Stage], transport: LocalTransport) -> tuple[int, list[dict]]:
    """Restore the simulator's stages and mailbox; returns (the tick it was taken after, metrics so far)."""
    if len(state["replicas"]) != 1 or len(state["replicas"][0]["stages"]) != len(stages):
        have = f"{len(state['replicas'][0]['stages'])} stages x {len(state['replicas'])} replicas"
        raise ValueError(f"the checkpoint holds {have}; this run has {len(stages)} stages x 1 replica: resume "
                         f"with the same --stages (and --engine dist --replicas for several replicas)")
    p = copied(state["replicas"][0])
    for s, st in zip(stages, p["stages"]):
        restore_stage(s, st)
    transport.box = dict(p["messages"])
    return state["tick"], list(state["records"])


def load(path: str, stages: list[Stage], transport: LocalTransport) -> tuple[int, list[dict]]:
    """``restore(read(path), ...)``."""
    return restore(read(path), stages, transport)


# ---- does this checkpoint belong to this run? ------------------------------------------------------
def check_config(state: dict, cfg, path: str):
    """Refuse a checkpoint written by a different run (a ValueError naming the values and the fix);
    return ``cfg``, with a measured partition (``time``) pinned to the checkpoint's cut points.

    ``--epochs`` may change (grow, or shrink) when nothing already run depends on it: the learning-rate
    schedule is not cosine (which anneals over the epochs), and no stage had reached the last batch of
    either run by the checkpoint's tick (a schedule's ticks up to t involve batches <= t only, and differ
    between two batch counts N only in whether b < N and b == N - 1). A finished run (its checkpoint
    taken after the last tick) may grow, unless cosine: ``resume`` runs the epochs added."""
    old = state.get("config") or {}
    if not old:  # written by hand (tests): nothing to compare
        return cfg
    there = {n: old.get(n, MISSING.get(n)) for n in MUST_MATCH}
    here = {n: getattr(cfg, n) for n in MUST_MATCH}
    there["method"] = get_method(old["method"], **old.get("method_opts", {})).describe()
    here["method"] = get_method(cfg.method, **cfg.method_opts).describe()
    if there["milestones"] is not None:
        there["milestones"] = tuple(there["milestones"])
    bad = [n for n in MUST_MATCH if there[n] != here[n]]
    if bad:
        diff = ", ".join(f"{n} {there[n]!r} there but {here[n]!r} here" for n in bad)
        fix = " ".join(_flag(n, old) for n in bad)
        raise ValueError(f"checkpoint {path!r} was written by another run ({diff}): resume with the settings it "
                         f"was written with ({fix}), or start afresh without --resume")
    _check_epochs(state, old["epochs"], cfg, path)
    if cfg.partition == "time" and state.get("boundaries"):  # measured: every measurement cuts elsewhere
        cfg = dataclasses.replace(cfg, partition=",".join(map(str, state["boundaries"])))
    return cfg


def _check_epochs(state: dict, old: int, cfg, path: str) -> None:
    per_epoch, tick = state.get("batches_per_epoch"), state["tick"]
    if old == cfg.epochs or per_epoch is None:
        return
    if state.get("finished"):
        _check_extension(old, cfg, path)
        return
    # epochs whose batches are not all forwarded at stage 0 by the tick (of a schedule from first_epoch on)
    need = state.get("first_epoch", 0) + (tick + 1) // per_epoch + 1
    why = None
    if cfg.lr_schedule in ("cosine", "warmup_cosine"):
        why = "the cosine learning-rate schedule anneals over the epochs of the run"
    elif min(old, cfg.epochs) < need:
        why = f"by tick {tick} the pipeline had reached the last batch of a {min(old, cfg.epochs)}-epoch run"
    if why:
        fix = f"{old}" if cfg.lr_schedule in ("cosine", "warmup_cosine") or old < need else f"{need} or more"
        raise ValueError(f"checkpoint {path!r} was written by a {old}-epoch run and this run has --epochs "
                         f"{cfg.epochs}, but {why}: resume with --epochs {fix}")


def _check_extension(old: int, cfg, path: str) -> None:
    if cfg.epochs < old:
        raise ValueError(f"checkpoint {path!r} holds a finished {old}-epoch run and this run has --epochs "
                         f"{cfg.epochs}: resume with --epochs {old} (nothing more to run) or more (to extend it)")
    if cfg.lr_schedule in ("cosine", "warmup_cosine"):
        raise ValueError(f"checkpoint {path!r} holds a finished {old}-epoch run whose cosine learning-rate schedule "
                         f"annealed over those {old} epochs, so it cannot be extended to --epochs {cfg.epochs}: "
                         f"train afresh with --epochs {cfg.epochs} (with --lr-schedule step or none, a finished "
                         f"run can be extended later)")


def check_boundaries(state: dict, cuts: list[int], path: str, partition: str | None = None) -> None:
    """The stages must be cut where the checkpoint's were (their state dicts must fit)."""
    want, got = state.get("boundaries"), list(cuts)
    if want is not None and list(want) != got:
        raise ValueError(f"checkpoint {path!r} cut the model at {list(want)} but this run cuts it at {got} "
                         f"(--partition {partition}): resume with --partition {','.join(map(str, want))}")


def _flag(name: str, config: dict) -> str:
    if name == "method":
        opts = "".join(f" --{'warmup' if k == 'warmup_epochs' else k} {v}"
                       for k, v in config.get("method_opts", {}).items())
        return f"--method {config['method']}{opts}"
    value = config.get(name, MISSING.get(name))
    if isinstance(value, dict):
        return f"{name}={value!r}"
    if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
    if name == "replicas" and value > 1:
        return f"--engine dist --replicas {value}"
    return f"--{name.replace('_', '-')} {value}"
