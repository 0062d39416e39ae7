"""What a Stage records for its in-flight batches and its telemetry: the bytes autograd saves in a forward
(``saved_bytes``), one in-flight batch (``InFlight``), the epoch's staleness, losses and stored-bytes peaks
(``Telemetry``), and how a batch's tensors are described in an error (``shapes_of``)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_flatten, tree_leaves


@contextlib.contextmanager
def saved_bytes(skip):
    """Count what autograd saves for backward inside the block: yields {storage address: bytes}, one entry
    per distinct storage, the tensors in ``skip`` (the weights) left out. A Stage counts the first forward of
    each input ``signature`` and reuses that count (the hooks are a Python call per saved tensor, tens of
    microseconds a forward); a model whose graph depends on its inputs' values, not only their shapes,
    is counted at that first forward."""
    skip = {t.untyped_storage().data_ptr() for t in skip}
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()  # one storage object per saved tensor: this hook runs for every one
        ptr = s.data_ptr()
        if ptr not in skip:
            saved[ptr] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def signature(tree):
    """What the bytes a forward saves depend on: the shapes and dtypes of the input's tensors, and its other
    leaves (None for no input)."""
    if tree is None or isinstance(tree, torch.Tensor):
        return None if tree is None else (tree.shape, tree.dtype)
    flat, spec = tree_flatten(tree)
    return str(spec), tuple((t.shape, t.dtype) if isinstance(t, torch.Tensor) else repr(t) for t in flat)


@dataclass
class InFlight:
    version: int                        # updates made before the forward
    x: object                           # stage input, a Tensor or pytree (kept for recompute, or leaves whose
                                        # grads go down)
    root: object                        # output (Tensor or pytree) or loss, with its graph (None: recompute)
    params: list[torch.Tensor] | None   # the weight snapshot the forward used (stash with delay)
    nbytes: int = 0                     # stored activation / input bytes (snapshot counted separately)


@dataclass
class Telemetry:
    staleness: list[tuple[int, int]] = field(default_factory=list)   # (batch, tau)
    # (b, loss, correct, n samples, number of targets); correct and targets None where accuracy does not apply
    losses: list[tuple[int, torch.Tensor, torch.Tensor | None, int, int | None]] = field(default_factory=list)
    peak_bytes: int = 0                  # peak stored bytes over the run
    epoch_peak_bytes: int = 0            # peak since the last collect


def shapes_of(tree) -> str:
    """Shapes and dtypes of a batch's tensors, with the range of integer ones (labels)."""
    def one(t):
        if not isinstance(t, torch.Tensor):
            return type(t).__name__
        text = f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
        if not t.is_floating_point() and t.numel():
            text += f" in [{int(t.min())}, {int(t.max())}]"
        return text
    leaves = tree_leaves(tree)
    return ", ".join(one(t) for t in leaves) if len(leaves) != 1 else one(leaves[0])
