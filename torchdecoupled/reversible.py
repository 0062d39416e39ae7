"""Reversible blocks: modules that rebuild their input from their output (what PETRA needs of a stage).

PETRA (Rivaud, Fournier, Pumir, Belilovsky, Eickenberg, Oyallon, ICLR 2025, arXiv:2406.02052, eq. 5)
keeps no input on a reversible stage: its backward rebuilds the input from the output, ``x = F^{-1}(y)``,
with the stage's current weights. The standard way to make a block invertible is the RevNet coupling
(Gomez, Ren, Urtasun, Grosse, "The Reversible Residual Network", NeurIPS 2017, arXiv:1707.04585): the
activation is two streams of equal size, concatenated along ``dim`` (so it is twice as wide), and::

    forward   y1 = x1 + F(x2)      y2 = x2 + G(y1)
    inverse   x2 = y2 - G(y1)      x1 = y1 - F(x2)

F and G are any functions of one stream (convolutions, BatchNorm, ...); they need not be invertible.

Your own block: any ``nn.Module`` with a method ``inverse(y)`` such that ``inverse(forward(x))`` equals
``x`` up to rounding, for a fixed set of weights and in training mode (BatchNorm on batch statistics).
Subclass :class:`Reversible` to say so explicitly, or :class:`Coupling` to get the RevNet coupling
with your own F and G. Rules for an exact rebuild:

- F and G must not modify their input in place;
- no dropout inside a reversible block: the inverse calls G before F, so F and G would draw other masks
  than in the forward (put dropout in a non-reversible block);
- BatchNorm in training mode is fine: F(x2) sees the same batch, hence the same batch statistics.

A stage (an ``nn.Sequential`` cut from the model) is reversible when every child is (``is_reversible``);
its inverse runs the children's inverses in reverse order (``invert``). Any other stage is not: under
PETRA it keeps its input and recomputes at the backward, as DSP does.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["Coupling", "Reversible", "invert", "is_reversible", "rebuild_input", "reversible_stages",
           "warn_if_none_reversible"]


class Reversible(nn.Module):
    """A block with ``forward(x)`` and ``inverse(y)``, ``inverse(forward(x)) == x`` (subclasses define both)."""

    def inverse(self, y):
        raise NotImplementedError(f"{type(self).__name__} must define inverse(y), the input that forward maps to y")


class Coupling(Reversible):
    """The RevNet coupling of two streams, split in halves along ``dim`` (see the module docstring)."""

    def __init__(self, f: nn.Module, g: nn.Module, dim: int = 1):
        super().__init__()
        self.f, self.g, self.dim = f, g, dim

    def _halves(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = t.shape[self.dim]
        if size % 2:
            raise ValueError(f"{type(self).__name__} splits dimension {self.dim} into two equal streams, but it has "
                             f"size {size}: give the block an even number of channels (two streams of {size // 2 + 1})")
        return t.chunk(2, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self._halves(x)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], self.dim)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = self._halves(y)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], self.dim)


def is_reversible(module: nn.Module) -> bool:
    """Whether ``module`` can rebuild its input: a module with an ``inverse`` method, or a non-empty
    ``nn.Sequential`` whose children all are."""
    if isinstance(module, nn.Sequential):
        return len(module) > 0 and all(is_reversible(m) for m in module)
    return callable(getattr(module, "inverse", None))


def invert(module: nn.Module, y):
    """The input that ``module`` maps to ``y``: a Sequential's children inverted last to first."""
    if isinstance(module, nn.Sequential):
        for child in reversed(module):
            y = invert(child, y)
        return y
    return module.inverse(y)


class _Inverse(nn.Module):
    """``invert(module, y)`` as a forward, so ``functional_call`` can run it on copies of the buffers."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, y):
        return invert(self.module, y)


def rebuild_input(module: nn.Module, y, buffers: dict[str, torch.Tensor]):
    """``invert(module, y)`` with the module's current weights and ``buffers`` (name -> tensor, copies of
    the module's buffers) in place of its own: BatchNorm's running statistics stay untouched."""
    return functional_call(_Inverse(module), {f"module.{n}": t for n, t in buffers.items()}, (y,))


def reversible_stages(modules) -> list[int]:
    """Indices of the stage modules that are reversible (``is_reversible``)."""
    return [k for k, m in enumerate(modules) if is_reversible(m)]


def warn_if_none_reversible(method, modules) -> None:
    """A method that rebuilds inputs (PETRA) on stages none of which is reversible (the last stage never
    rebuilds): say so, since every stage then keeps its inputs and the run is DSP's."""
    if getattr(method, "activations", None) != "reverse" or len(modules) < 2 or reversible_stages(modules[:-1]):
        return
    which = "stage 0 is not" if len(modules) == 2 else f"none of stages 0-{len(modules) - 2} is"
    warnings.warn(f"{method.name}: {which} reversible (a stage is when each of its blocks has an inverse: "
                  f"torchdecoupled.reversible), so every stage keeps its inputs and "
                  f"recomputes, as DSP; use a model with reversible blocks (revnet1d, revnet_mini, revnet18) or cut "
                  f"it between them", stacklevel=3)
