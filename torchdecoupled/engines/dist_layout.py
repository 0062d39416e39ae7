"""Where a rank sits in a distributed run, and what it shares with the ranks beside it.

Rank layout: ``rank = stage * D + replica`` (D = replicas), so stage k's replicas are the consecutive
ranks ``k*D .. k*D + D-1`` and replica r forms its own pipeline with replica r of the other stages.
Replica r takes the contiguous slice r of every batch (``torch.tensor_split``: inputs at stage 0, labels
where a loss is computed); its loss is the mean over its slice, and before each update the stage's D
replicas average their gradients with one all-reduce (``Stage.grad_sync``). So D > 1 equals D = 1 only
up to float rounding (a mean of slice means; slices of unequal size weigh equally), and BatchNorm
normalizes with the statistics of the slice, not of the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .dist_transport import PeerError, brief


@dataclass(frozen=True)
class Layout:
    stages: int
    replicas: int
    rank: int

    @property
    def stage(self) -> int:
        return self.rank // self.replicas

    @property
    def replica(self) -> int:
        return self.rank % self.replicas

    @property
    def world_size(self) -> int:
        return self.stages * self.replicas

    def ranks_of_stage(self, k: int) -> list[int]:
        return [k * self.replicas + r for r in range(self.replicas)]

    def name(self, rank: int | None = None) -> str:
        rank = self.rank if rank is None else rank
        return f"stage {rank // self.replicas} (rank {rank})"


def grad_averager(group, replicas: int):
    """Stage.grad_sync for D replicas: one all-reduce of all gradients of the stage, divided by D."""
    def sync(params: list[torch.Tensor]) -> None:
        have = [p for p in params if p.grad is not None]  # the same on every replica (same graph)
        if not have:
            return
        grads = [p.grad for p in have]
        flat = _flatten_dense_tensors(grads)
        collective("averaging the gradients over the stage's replicas", dist.all_reduce, flat, group=group)
        flat.div_(replicas)
        for p, g in zip(have, _unflatten_dense_tensors(flat, grads)):
            p.grad = g
    return sync


def collective(what: str, fn, *args, **kw):
    """Run a collective; a backend error there means another process died or hung (PeerError)."""
    try:
        return fn(*args, **kw)
    except RuntimeError as e:
        raise PeerError(f"{what} failed: {brief(e)}") from e


def init_process_group(backend: str, layout: Layout, rendezvous: tuple[str, object], timeout: float) -> None:
    """rendezvous: ("store", (host, port)) of the launcher's TCPStore, or ("url", init_method)."""
    td = timedelta(seconds=timeout)
    how, where = rendezvous
    kw = dict(rank=layout.rank, world_size=layout.world_size, timeout=td)
    if how == "store":
        host, port = where
        store = dist.TCPStore(host, port, is_master=False, timeout=td)
        dist.init_process_group(backend, store=store, **kw)
    else:
        dist.init_process_group(backend, init_method=where, **kw)
