"""What crosses a stage boundary: a Tensor, or a pytree (tuple, list, dict, nested) of tensors.

Hidden states with a mask, a tensor with a skip connection: a stage may take and return any pytree.
The convention every engine relies on:

- activations go up detached; at a stage that sends a gradient down, every floating (or complex) leaf of
  its input becomes a fresh leaf that requires grad (``require_grad``); integer and bool leaves travel
  unchanged and get no gradient;
- a gradient has the structure of the activation it belongs to: a tensor at every floating leaf, None at
  every other leaf (``grad_tree``). A plain Tensor activation has a plain Tensor gradient.

None is a leaf here (``is_leaf``), so an activation and its gradient flatten to aligned leaves.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten


def is_leaf(v) -> bool:
    return v is None


def leaves(tree) -> list:
    """The leaves of ``tree`` in order (None counts as a leaf)."""
    if tree is None or isinstance(tree, torch.Tensor):  # the usual boundary, without pytree's walk
        return [tree]
    return tree_flatten(tree, is_leaf=is_leaf)[0]


def carries_grad(t) -> bool:
    """A leaf that carries a gradient: a floating point or complex tensor."""
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


def map_tensors(fn, tree):
    """``tree`` with ``fn`` applied to every tensor leaf."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    return tree_map(lambda v: fn(v) if isinstance(v, torch.Tensor) else v, tree, is_leaf=is_leaf)


def detach_tree(tree):
    """``tree`` with every tensor detached (the same structure; a Tensor stays a Tensor)."""
    return map_tensors(torch.Tensor.detach, tree)


def clone_tree(tree):
    """``tree`` with every tensor detached and copied."""
    return map_tensors(lambda t: t.detach().clone(), tree)


def require_grad(tree):
    """``tree`` with every floating leaf a fresh ``detach().requires_grad_(True)`` leaf, the rest unchanged."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().requires_grad_(True) if carries_grad(tree) else tree
    return tree_map(lambda v: v.detach().requires_grad_(True) if carries_grad(v) else v, tree, is_leaf=is_leaf)


def to_device(tree, device, non_blocking: bool = True):
    """``tree`` with every tensor on ``device``."""
    if isinstance(tree, torch.Tensor) and tree.device == device:
        return tree
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), tree)


def nbytes(tree) -> int:
    """Bytes of all tensor leaves."""
    return sum(t.nbytes for t in leaves(tree) if isinstance(t, torch.Tensor))


def grad_leaves(tree) -> list[torch.Tensor]:
    """The leaves of ``tree`` that carry gradients, in order."""
    return [t for t in leaves(tree) if carries_grad(t)]


def grad_tree(like, grads):
    """A gradient for ``like``: its structure, ``grads`` (one per ``grad_leaves(like)``, in order; None
    becomes zeros, since a receiver expects a tensor) at the floating leaves, None at the others."""
    if isinstance(like, torch.Tensor) and carries_grad(like):
        return torch.zeros_like(like) if grads[0] is None else grads[0]
    flat, spec = tree_flatten(like, is_leaf=is_leaf)
    it = iter(grads)
    out = []
    for t in flat:
        if carries_grad(t):
            g = next(it)
            out.append(torch.zeros_like(t) if g is None else g)
        else:
            out.append(None)
    return tree_unflatten(out, spec)


def pairs(out, grad) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The (roots, gradients) of a backward from output ``out`` with gradient ``grad`` (same structure):
    the floating leaves that have a gradient and are part of a graph."""
    if isinstance(out, torch.Tensor) and isinstance(grad, torch.Tensor):
        return ([out], [grad]) if carries_grad(out) and out.requires_grad else ([], [])
    outs, spec = tree_flatten(out, is_leaf=is_leaf)
    grads, gspec = tree_flatten(grad, is_leaf=is_leaf)
    if gspec != spec:
        raise ValueError(f"the gradient's structure {gspec} is not the output's {spec}: send a gradient with "
                         f"the structure of the activation (a tensor at each floating leaf, None elsewhere)")
    kept = [(o, g) for o, g in zip(outs, grads) if g is not None and carries_grad(o) and o.requires_grad]
    return [o for o, _ in kept], [g for _, g in kept]


def batch_size(*trees) -> int:
    """The length of the first dimension of the first tensor leaf (with a dimension) of the first tree
    that has one."""
    for tree in trees:
        for t in leaves(tree):
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                return t.shape[0]
    raise ValueError("cannot tell the batch size: neither the targets nor the outputs hold a tensor with a "
                     "batch dimension; give the targets (or outputs) a first dimension of one row per sample")


def rows(tree, start: int, stop: int):
    """Rows [start, stop) of every tensor leaf of ``tree``."""
    return map_tensors(lambda t: t[start:stop], tree)
