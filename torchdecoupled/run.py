"""One CLI run (``torchdecoupled train``): a ``RunConfig`` turned into a ``Pipeline`` and its ``fit``; and
the weights a finished run left, scored again (``torchdecoupled eval``: ``evaluate_run``).

Batches stream across epochs (the pipeline is not flushed at an epoch boundary). Epoch e is evaluated
after the tick in which the last stage computes the loss of epoch e's last batch; the final epoch is
evaluated after the pipeline drains (every batch's gradient applied at every stage).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import torch

from . import checkpoint, outdir
from .build import build_pipeline
from .config import RunConfig


def train(cfg: RunConfig, on_ready: Callable[[RunConfig], None] | None = None) -> dict | None:
    """Run one training job on either engine; returns the summary (also written to cfg.out/summary.json).
    Under torchrun, ranks other than 0 return None. ``on_ready(cfg)`` runs once everything is checked and
    built, before anything is written (the CLI announces and saves the configuration there)."""
    cfg = cfg.resolved()
    outdir.check(cfg.out, cfg.resume, cfg.force)  # before anything is read or written
    if cfg.engine == "sim":
        torch.set_num_threads(cfg.threads or 1)  # one thread per stage worker: deterministic, as in dist
    path, state = None, None
    if cfg.resume:  # a checkpoint of another run fails here, in one line, before anything starts
        path = checkpoint.in_dir(cfg.resume)
        state = checkpoint.read(path, map_location="cpu")
        cfg = checkpoint.check_config(state, cfg, path)
    pipe, data, batches = build_pipeline(cfg)
    if state is not None:
        checkpoint.check_boundaries(state, pipe.boundaries, path, cfg.partition)
        del state
    if on_ready is not None:
        on_ready(cfg)
    if cfg.force:  # the earlier run's results go only once this one is set to start (outdir.py)
        outdir.clear(cfg.out, cfg.resume)
    dtype = getattr(torch, cfg.dtype)
    info = dict(cfg.__dict__)
    if getattr(data, "source", None):  # text: the corpus read (name, bytes, SHA-256, licence)
        info["data_source"] = dict(data.source)
    records = pipe.fit(batches, cfg.epochs, val_data=data.validation(dtype), progress=cfg.progress,
                       out=cfg.out, checkpoint=cfg.checkpoint, resume=path, info=info,
                       tensorboard=cfg.tensorboard)
    if not pipe.last_run.get("writes_summary", True):
        return None
    return pipe.summary(records, info)


def evaluate_run(run_dir: str, dataset: str | None = None, data_root: str | None = None) -> dict:
    """Score a finished run's weights (``run_dir/model.pt``) on the test set of ``dataset`` (default: the
    run's; read from ``data_root``, default the run's): the zoo's model rebuilt from ``run_dir/summary.json``,
    cut where the run cut it, evaluated on the CPU as the run evaluated its last epoch. Returns
    ``{"dataset", "test_loss", "test_acc"}``: for a run trained on the CPU, its final test_loss and test_acc."""
    cfg, cuts = _run_config(run_dir)
    cfg = dataclasses.replace(cfg, dataset=dataset or cfg.dataset, data_root=data_root or cfg.data_root,
                              partition=",".join(map(str, cuts)) if cuts else cfg.partition, engine="sim",
                              replicas=1, device="cpu", out=None, checkpoint=False, resume=None, progress=False)
    torch.set_num_threads(cfg.threads or 1)  # as the run did: the same sums
    pipe, data, _ = build_pipeline(cfg)
    weights = torch.load(os.path.join(run_dir, checkpoint.MODEL_FILE), map_location="cpu", weights_only=True)
    try:
        pipe.model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"the weights in {run_dir!r} (a {cfg.model}) do not fit the model built for dataset "
                         f"{cfg.dataset!r} ({str(e).strip().splitlines()[-1].strip()}): evaluate on a dataset "
                         f"with the run's input shape and number of classes") from None
    return {"dataset": cfg.dataset, **pipe.evaluate(data.validation(getattr(torch, cfg.dtype)))}


def _run_config(run_dir: str) -> tuple[RunConfig, list[int] | None]:
    """The configuration a ``train --out`` directory records (summary.json), and where the run cut the model."""
    expected = f"a run directory of `torchdecoupled train --out DIR` (summary.json and {checkpoint.MODEL_FILE})"
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"no directory {run_dir!r}: expected {expected}")
    for name in ("summary.json", checkpoint.MODEL_FILE):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise FileNotFoundError(f"no {name} in {run_dir!r}: expected {expected}")
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path) as f:
            summary = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path!r} is not JSON ({e}): expected {expected}") from None
    config = summary.get("config") if isinstance(summary, dict) else None
    if not isinstance(config, dict) or "model" not in config or "dataset" not in config:
        raise ValueError(f"{path!r} names no zoo model and dataset (a Python API run? load its {checkpoint.MODEL_FILE} "
                         f"into your model: model.load_state_dict(torch.load(path, weights_only=True))): expected "
                         f"{expected}")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in config.items() if k in known}), summary.get("boundaries")
