"""One CLI run (``torchdecoupled train``): a ``RunConfig`` turned into a ``Pipeline`` and its ``fit``.

Batches stream across epochs (the pipeline is not flushed at an epoch boundary). Epoch e is evaluated
after the tick in which the last stage computes the loss of epoch e's last batch; the final epoch is
evaluated after the pipeline drains (every batch's gradient applied at every stage).
"""
from __future__ import annotations

import torch

from . import checkpoint
from .build import build_pipeline
from .config import RunConfig


def train(cfg: RunConfig) -> dict | None:
    """Run one training job on either engine; returns the summary (also written to cfg.out/summary.json).
    Under torchrun, ranks other than 0 return None."""
    cfg = cfg.resolved()
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
    dtype = getattr(torch, cfg.dtype)
    info = dict(cfg.__dict__)
    records = pipe.fit(batches, cfg.epochs, val_data=(data.test_x.to(dtype), data.test_y), progress=cfg.progress,
                       out=cfg.out, checkpoint=cfg.checkpoint, resume=path, info=info)
    if not pipe.last_run.get("writes_summary", True):
        return None
    return pipe.summary(records, info)
