"""Start-up agreements of a distributed run, before any training message travels.

- Boundaries: what each stage sends up (structure, per-sample shapes, dtypes: ``dist_plan.Boundary``),
  from one sample of batch 0 passed along replica 0's pipeline, stage to stage (each process holds only
  its own stage's layers), then shared with every process. The same pass gives the network's
  per-sample input shape, which sizes local learning's auxiliary heads.
- Evaluation data: rank 0 reads it once; stage 0 keeps the inputs of each chunk, the last stage gets
  the targets, everyone the chunk sizes.

All on the gloo group of the data messages (``dist_feed``), which carries nothing else yet.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map

from ..precision import eval_forward
from .dist_layout import Layout, collective
from .dist_plan import Boundary


def agree_boundaries(layout: Layout, module, first_x, group, device, precision: str = "float32"
                     ) -> tuple[list[Boundary], tuple]:
    """Every stage's Boundary and the input's per-sample shape, on every process. ``first_x``: batch 0's
    inputs on rank 0 (None elsewhere); the pass runs as ``Stage.predict`` does (``precision``)."""
    K, D, k = layout.stages, layout.replicas, layout.stage
    mine, input_shape = None, None
    if layout.replica == 0:
        if k == 0:
            x = tree_map(lambda t: t[:1], first_x)
            input_shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else None
        else:
            box = [None]
            collective("receiving the start-up sample", dist.recv_object_list, box, (k - 1) * D, group=group)
            x, input_shape = box[0]
        x = tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, x)
        out = eval_forward(module, x, precision, device, last=k == K - 1)
        mine = Boundary.of(out)
        if k < K - 1:
            out = tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, out)
            collective("sending the start-up sample", dist.send_object_list, [(out, input_shape)], (k + 1) * D,
                       group=group)
    everyone = [None] * layout.world_size
    collective("agreeing on the stage boundaries", dist.all_gather_object, everyone,
               (layout.stage, layout.replica, mine, input_shape), group=group)
    bounds = [b for s, r, b, _ in sorted(everyone, key=lambda e: e[0]) if r == 0]
    shape = next(s for st, r, _, s in everyone if st == 0 and r == 0)
    return bounds, shape


def share_eval(layout: Layout, chunks: list | None, group) -> tuple[list[int], list | None, list | None]:
    """(chunk sizes, this process's inputs or None, its targets or None). ``chunks``: rank 0's list of
    (x, y) evaluation chunks."""
    from .dist_feed import batch_len

    chunks = chunks or []
    box = [[batch_len(x) for x, _ in chunks] if layout.rank == 0 else None]
    collective("sharing the evaluation data's size", dist.broadcast_object_list, box, src=0, group=group)
    sizes = box[0]
    last = (layout.stages - 1) * layout.replicas
    xs = [x for x, _ in chunks] if layout.rank == 0 else None
    ys = None
    if layout.rank == 0 and last == 0:
        ys = [y for _, y in chunks]
    elif layout.rank == 0:
        collective("sending the evaluation targets", dist.send_object_list, [[y for _, y in chunks]], last,
                   group=group)
    elif layout.rank == last:
        box = [None]
        collective("receiving the evaluation targets", dist.recv_object_list, box, 0, group=group)
        ys = box[0]
    return sizes, xs, ys
