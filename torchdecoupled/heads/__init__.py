"""Auxiliary heads for local learning: each turns a stage's output h into that stage's local loss.

In local learning (DGL, Belilovsky et al. ICML 2020; InfoPro, Wang et al. ICLR 2021) stage k < K-1
trains on ``head.loss(h, y, x0)``: h is the stage output, y the labels of the same batch, x0 the
network input of the same batch. Built-in heads, by name:

    linear    global average pool + Linear, cross-entropy               (classify.LinearHead)
    dgl       DGL's MLP-SR-aux, cross-entropy                           (classify.DGLHead)
    infopro   lambda1 * input reconstruction + lambda2 * SupCon         (infopro.InfoProHead)
    auglocal  fresh copies of sampled later layers + pool + Linear (AugLocal, ICLR 2024; auglocal.py)
    lm        LayerNorm + Linear unembedding, per-token cross-entropy   (lm.LMHead, token streams)
    lm_frozen a frozen copy of the last stage's LayerNorm + Linear       (lm.FrozenLMHead)
    man_dgl   DGL's head on LB(h) + EMA(h), copies of the next stage's first layer (MAN, ECCV 2024; man.py)
    man_infopro  InfoPro's loss on the same y                            (man.MANHead)

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

A pipeline's heads (the CLI's ``build_stage`` and ``Pipeline`` share this): ``stage_head(head, modules, k,
sample, num_classes, seed)`` sizes stage k's head by a forward of ``sample[:2]`` through ``modules[:k+1]``
and builds it from a name, or from a factory called once per stage (a head is never shared by stages):

    def factory(stage_index, feature_shape, num_classes, input_shape) -> AuxHead: ...

A HEADS factory that takes a keyword ``modules`` (auglocal, lm_frozen, man_*) is also given the list of the
pipeline's stage modules by ``stage_head`` / ``build_head(..., modules=...)``; copying them is its business.
"""
from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from torch import nn

from torchdecoupled.heads.base import AuxHead, check_shape
from torchdecoupled.heads.classify import ClassifierHead, DGLHead, LinearHead
from torchdecoupled.heads.infopro import InfoProHead, infopro_lambdas, supcon_loss
from torchdecoupled.heads.auglocal import AugLocalHead, auglocal_head
from torchdecoupled.heads.lm import FrozenLMHead, LMHead, frozen_lm_head
from torchdecoupled.heads.man import MANHead, man_dgl_head, man_infopro_head

__all__ = ["AuxHead", "HEADS", "HeadFactory", "make_head", "stage_head", "build_head", "check_factory", "ClassifierHead",
           "LinearHead", "DGLHead", "InfoProHead", "infopro_lambdas", "supcon_loss", "needs_modules", "AugLocalHead",
           "LMHead", "FrozenLMHead", "MANHead"]


def _linear(feature_shape, num_classes, input_shape, stage=0, num_stages=2, **kwargs) -> AuxHead:
    return LinearHead(feature_shape, num_classes, **kwargs)


def _dgl(feature_shape, num_classes, input_shape, stage=0, num_stages=2, **kwargs) -> AuxHead:
    return DGLHead(feature_shape, num_classes, **kwargs)


def _infopro(feature_shape, num_classes, input_shape, **kwargs) -> AuxHead:
    return InfoProHead(feature_shape, num_classes, input_shape, **kwargs)


def _lm(feature_shape, num_classes, input_shape, stage=0, num_stages=2, **kwargs) -> AuxHead:
    return LMHead(feature_shape, num_classes, **kwargs)


HEADS: dict[str, Callable[..., AuxHead]] = {"linear": _linear, "dgl": _dgl, "infopro": _infopro,
                                            "auglocal": auglocal_head, "lm": _lm, "lm_frozen": frozen_lm_head,
                                            "man_dgl": man_dgl_head, "man_infopro": man_infopro_head}


def needs_modules(head) -> bool:
    """Whether ``head`` names a HEADS factory that takes the pipeline's stage modules (keyword ``modules``)."""
    return isinstance(head, str) and head in HEADS and "modules" in inspect.signature(HEADS[head]).parameters


# A pipeline's per-stage head factory: (stage_index, feature_shape, num_classes, input_shape) -> AuxHead
HeadFactory = Callable[[int, tuple, int, tuple], AuxHead]
FACTORY_FIX = "pass head=lambda k, feature_shape, num_classes, input_shape: MyHead(...), which builds one per stage"


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


def check_factory(head) -> HeadFactory:
    """Refuse what cannot build one head per stage: an AuxHead instance (it would be shared) or a non-callable."""
    if isinstance(head, nn.Module):
        raise ValueError(f"head={type(head).__name__}(...) is one module, but every stage 0..K-2 needs a head "
                         f"of its own: {FACTORY_FIX}")
    if not callable(head):
        raise TypeError(f"head must be a name ({', '.join(sorted(HEADS))}) or a factory (got "
                        f"{type(head).__name__}): {FACTORY_FIX}")
    return head


def stage_head(head: str | HeadFactory, modules: Sequence[nn.Module], k: int, sample: torch.Tensor,
               num_classes: int, seed: int = 0) -> AuxHead:
    """The auxiliary head of stage k of the pipeline ``modules``, on the device and dtype of stage k's output.

    feature_shape comes from a forward of ``sample[:2]`` (network inputs) through modules[:k+1] in eval mode
    without gradients (BatchNorm statistics do not move; each module's mode is restored). head is a name in
    HEADS (``make_head``) or a factory ``(k, feature_shape, num_classes, input_shape) -> AuxHead``.
    Construction draws from a private RNG seeded with ``seed * 1000 + k``: the global RNG is untouched.
    """
    x0 = sample[:2]
    x = x0
    with torch.no_grad():
        for m in modules[:k + 1]:
            p = next(m.parameters(), None)
            x = x if p is None else x.to(p.device)
            modes = [(mod, mod.training) for mod in m.modules()]
            try:
                x = m.eval()(x)
            finally:
                for mod, mode in modes:
                    mod.training = mode
    return build_head(head, k, len(modules), tuple(x.shape[1:]), tuple(x0.shape[1:]), num_classes, seed,
                      x.device, x.dtype, modules=modules)


def build_head(head: str | HeadFactory, k: int, num_stages: int, feature_shape: tuple, input_shape: tuple,
               num_classes: int, seed: int = 0, device=None, dtype=None, modules=None) -> AuxHead:
    """Stage k's auxiliary head for features of ``feature_shape`` (per sample), on ``device`` in ``dtype``
    (a floating dtype; else the default): the same head wherever it is built, from a private RNG.
    ``modules`` (the pipeline's stage modules) reach a HEADS factory that takes them (``needs_modules``)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed * 1000 + k)
        if isinstance(head, str):
            extra = {"modules": list(modules) if modules is not None else None} if needs_modules(head) else {}
            h = make_head(head, feature_shape, num_classes, input_shape, stage=k, num_stages=num_stages, **extra)
        else:
            h = check_factory(head)(k, feature_shape, num_classes, input_shape)
    if not isinstance(h, AuxHead):
        raise TypeError(f"the head factory returned {type(h).__name__} for stage {k}; it must return a "
                        f"torchdecoupled.heads.AuxHead (subclass it and implement loss(h, y, x0))")
    floating = dtype is not None and dtype.is_floating_point
    return h.to(device=device, dtype=dtype) if floating else h.to(device)
