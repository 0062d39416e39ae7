"""Auxiliary heads for local learning: each turns a stage's output h into that stage's local loss.

In local learning (DGL, Belilovsky et al. ICML 2020; InfoPro, Wang et al. ICLR 2021) stage k < K-1
trains on ``head.loss(h, y, x0)``: h is the stage output, y the labels of the same batch, x0 the
network input of the same batch. Built-in heads, by name:

    linear    global average pool + Linear, cross-entropy               (classify.LinearHead)
    dgl       DGL's MLP-SR-aux, cross-entropy                           (classify.DGLHead)
    infopro   lambda1 * input reconstruction + lambda2 * SupCon         (infopro.InfoProHead)

    head = make_head("dgl", feature_shape=h.shape[1:], num_classes=10, input_shape=x0.shape[1:])

Your own head: subclass AuxHead and implement ``loss(h, y, x0) -> scalar tensor``. Pass an instance
wherever a head name is accepted (``make_head`` returns it unchanged), or add a factory to HEADS
under a new name; a factory is called as
``factory(feature_shape, num_classes, input_shape, stage=..., num_stages=..., **kwargs)``:

    class MyHead(AuxHead):
        def __init__(self, channels, num_classes):
            super().__init__()
            self.fc = nn.Linear(channels, num_classes)
        def loss(self, h, y, x0):
            return nn.functional.cross_entropy(self.fc(h.flatten(2).mean(2)), y)

    head = make_head(MyHead(64, 10), ...)   # returned unchanged
    HEADS["mine"] = lambda fs, nc, ins, **kw: MyHead(fs[0], nc)   # then make_head("mine", ...)

Heads never modify h in place; gradients reach h and the head's parameters and nothing else.
Construction uses the global RNG (deterministic under torch.manual_seed) unless ``seed`` is given,
in which case it draws from its own forked RNG and leaves the global one untouched. Heads are built
in the default dtype; ``head.to(torch.float64)`` for double features.
"""
from __future__ import annotations

from typing import Callable

import torch

from torchdecoupled.heads.base import AuxHead, check_shape
from torchdecoupled.heads.classify import ClassifierHead, DGLHead, LinearHead
from torchdecoupled.heads.infopro import InfoProHead, infopro_lambdas, supcon_loss

__all__ = ["AuxHead", "HEADS", "make_head", "ClassifierHead", "LinearHead", "DGLHead",
           "InfoProHead", "infopro_lambdas", "supcon_loss"]


def _linear(feature_shape, num_classes, input_shape, stage=0, num_stages=2, **kwargs) -> AuxHead:
    return LinearHead(feature_shape, num_classes, **kwargs)


def _dgl(feature_shape, num_classes, input_shape, stage=0, num_stages=2, **kwargs) -> AuxHead:
    return DGLHead(feature_shape, num_classes, **kwargs)


def _infopro(feature_shape, num_classes, input_shape, **kwargs) -> AuxHead:
    return InfoProHead(feature_shape, num_classes, input_shape, **kwargs)


HEADS: dict[str, Callable[..., AuxHead]] = {"linear": _linear, "dgl": _dgl, "infopro": _infopro}


def make_head(name: str | AuxHead, feature_shape: tuple[int, ...], num_classes: int,
              input_shape: tuple[int, ...], stage: int = 0, num_stages: int = 2,
              seed: int | None = None, **kwargs) -> AuxHead:
    """Build the auxiliary head `name` for the stage `stage` of `num_stages`.

    feature_shape is h.shape[1:]: (C, H, W), (C, L) or (F,); input_shape is x0.shape[1:].
    kwargs go to the head (e.g. lambda1=, lambda2=, temperature= for "infopro").
    An AuxHead instance is returned as is.
    """
    if isinstance(name, AuxHead):
        return name
    if not isinstance(name, str):
        raise TypeError(f"head must be a name or an AuxHead instance (got {type(name).__name__}); "
                        f"subclass torchdecoupled.heads.AuxHead for a custom head")
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r} (valid: {', '.join(sorted(HEADS))})")
    feature_shape = check_shape(feature_shape, "feature_shape")
    input_shape = check_shape(input_shape, "input_shape")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (got {num_classes})")
    if not 0 <= stage < num_stages - 1:
        raise ValueError(f"auxiliary heads sit on stages 0..num_stages-2 (got stage {stage}, "
                         f"num_stages {num_stages}); the last stage uses the network's own loss")
    if seed is None:
        return HEADS[name](feature_shape, num_classes, input_shape, stage=stage,
                           num_stages=num_stages, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HEADS[name](feature_shape, num_classes, input_shape, stage=stage,
                           num_stages=num_stages, **kwargs)
