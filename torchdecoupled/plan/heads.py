"""The auxiliary heads' costs for local learning (DGL, Belilovsky et al. ICML 2020; InfoPro, Wang et al. ICLR
2021): a stage k < K-1 ending after layer i also runs ``head.loss(h_i, y, x0)`` forward in its F and backward in
its B (``Stage.forward`` / ``Stage.backward``). Measured once per distinct output shape, one thread."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..heads import make_head
from ..stage import saved_bytes


def head_costs(model: nn.Sequential, sample: torch.Tensor, target: torch.Tensor, name: str, num_classes: int,
               repeats: int = 3) -> list[dict]:
    """Per layer i: {"forward_s", "backward_s", "saved_bytes"} of head ``name`` on the output of layer i."""
    outs, x = [], sample
    with torch.no_grad():
        modes = [m.training for m in model.modules()]
        for m in model:
            x = m(x)
            outs.append(x)
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    seen: dict[tuple, dict] = {}
    rows = []
    for h in outs:
        shape = tuple(h.shape[1:])
        if shape not in seen:
            seen[shape] = _one(h, sample, target, name, num_classes, repeats)
        rows.append(seen[shape])
    return rows


def _one(h, x0, y, name, num_classes, repeats) -> dict:
    head = make_head(name, tuple(h.shape[1:]), num_classes, tuple(x0.shape[1:]), stage=0, num_stages=2, seed=0)
    head = head.to(h.device, h.dtype)
    fwd, bwd, saved_total = [], [], 0
    for r in range(repeats + 1):
        hh = h.detach().requires_grad_(True)
        with saved_bytes(list(head.parameters())) as saved:
            t0 = time.perf_counter()
            loss = head.loss(hh, y, x0)
            t1 = time.perf_counter()
        torch.autograd.grad(loss, [hh, *[p for p in head.parameters() if p.requires_grad]], allow_unused=True)
        t2 = time.perf_counter()
        if r:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        saved_total = sum(v for p, v in saved.items() if p != hh.untyped_storage().data_ptr())
    return {"forward_s": statistics.median(fwd), "backward_s": statistics.median(bwd), "saved_bytes": saved_total}
