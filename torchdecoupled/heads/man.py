"""MAN: the auxiliary input passes through an EMA of the next stage's first layer plus a learnable copy of it.

Su, Cai, Zhu, He, Xu, Guan, Si, "Momentum Auxiliary Network for Supervised Local Learning", ECCV 2024
(arXiv:2407.05623); reference code github.com/JunhaoSu0/MAN, ``networks/resnetInfoPro_MAN.py``
(``InfoProResNet.forward``, CIFAR and ImageNet versions). For stage k < K-1 with output h:

    y = LB_k(h) + EMA_k(h)                          the auxiliary input (the reference's ``y``)
    loss_k = inner_head.loss(y, labels, x0)         DGL's MLP-SR-aux ("man_dgl") or InfoPro's ("man_infopro")
    psi <- m psi + (1 - m) theta_next               after every update of stage k+1 (``receive_next``)

- theta_next: the parameters (``parameters()``, BatchNorm's weight and bias, not its running statistics)
  of the FIRST LAYER of stage k+1: the first child of its module that has parameters (the children of an
  nn.Sequential stage, as ``auglocal.children``; any other module is its one layer). In the reference that is
  the residual block right after module i's last block (``self.layer<mo>[la]``), never the classifier.
- EMA_k: a deep copy of that layer whose parameters have ``requires_grad=False`` (no gradient, so no optimizer
  state); the loss's gradient flows through it into h. Its BatchNorm statistics move with its own forwards,
  as in the reference (the training loss uses batch statistics).
- LB_k ("learnable bias"): a trainable deep copy of the same layer, trained by stage k's local loss.
- m: 0.995 by default (``MOMENTUM``): the value of the reference's README commands (CIFAR, ImageNet) and of
  the ImageNet class default; the CIFAR class default is 0.999 and ``train.py``'s flag default 1.0.

Our choice where the reference differs: LB_k and EMA_k start equal to the layer (the copies). The reference
copies the layer and then runs the network's weight initialisation over every module, the copies included,
so their convolution weights start as independent random draws (BatchNorm weight 1, bias 0).

When EMA_k sees which version of stage k+1 is ``methods/man.py``'s business (its table); this head only
applies the update it is handed, in the reference's order: ``psi * m + theta * (1 - m)``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from torchdecoupled.heads.auglocal import children, layer_shapes
from torchdecoupled.heads.base import AuxHead
from torchdecoupled.heads.classify import DGLHead
from torchdecoupled.heads.infopro import InfoProHead

MOMENTUM = 0.995
MODULES_FIX = ("build it through stage_head(...) or a Pipeline (they pass modules=), or pass "
               "modules=<the pipeline's stage modules>")


def first_layer(module: nn.Module) -> nn.Module:
    """The first child of a stage's module that has parameters (the module itself if it is not a Sequential)."""
    for layer in children(module):
        if next(layer.parameters(), None) is not None:
            return layer
    raise ValueError(f"MAN needs the next stage's first layer with parameters, but {type(module).__name__} has "
                     f"none: cut the model so that every stage holds a layer with parameters")


def first_layer_params(module: nn.Module) -> list[torch.Tensor]:
    """theta_next: the parameters of ``first_layer(module)``, in ``parameters()`` order."""
    return list(first_layer(module).parameters())


class MANHead(AuxHead):
    """``inner.loss(LB(h) + EMA(h), y, x0)``; ``receive_next(theta)`` moves the EMA (module docstring)."""

    name = "man"

    def __init__(self, layer: nn.Module, inner: AuxHead, momentum: float = MOMENTUM):
        super().__init__()
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MAN momentum must be in [0, 1] (got {momentum!r}; the reference uses 0.995)")
        self.momentum, self.inner = float(momentum), inner
        self.lb = copy.deepcopy(layer)
        self.ema = copy.deepcopy(layer)
        for p in self.lb.parameters():
            p.grad = None
            p.requires_grad_(p.is_floating_point())
        for p in self.ema.parameters():
            p.grad = None
            p.requires_grad_(False)

    def aux_input(self, h: torch.Tensor) -> torch.Tensor:
        """y = LB(h) + EMA(h): what the inner head sees."""
        return self.lb(h) + self.ema(h)

    def loss(self, h: torch.Tensor, y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.inner.loss(self.aux_input(h), y, x0)

    def next_shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """(shape, dtype) of each tensor of theta_next, which ``receive_next`` takes."""
        return [(tuple(p.shape), p.dtype) for p in self.ema.parameters()]

    @torch.no_grad()
    def receive_next(self, theta: Sequence[torch.Tensor]) -> None:
        """psi <- m psi + (1 - m) theta, tensor by tensor (the reference's
        ``paramEMA.data * momentum + paramEncoder.data * (1 - momentum)``)."""
        psi = list(self.ema.parameters())
        if len(theta) != len(psi) or any(tuple(t.shape) != tuple(p.shape) for t, p in zip(theta, psi)):
            raise ValueError(f"MAN's EMA holds tensors {[tuple(p.shape) for p in psi]} but got "
                             f"{[tuple(t.shape) for t in theta]}: build the head from the next stage's modules")
        m = self.momentum
        for p, t in zip(psi, theta):
            p.copy_(p * m + t.to(device=p.device, dtype=p.dtype) * (1 - m))


def _layer(modules, stage: int, num_stages: int) -> nn.Module:
    if modules is None:
        raise ValueError(f"head 'man' copies the first layer of the next stage: {MODULES_FIX}")
    if len(modules) != num_stages:
        raise ValueError(f"man got {len(modules)} stage modules for num_stages {num_stages}: pass every stage")
    return first_layer(modules[stage + 1])


def man_head(feature_shape: tuple[int, ...], num_classes: int, input_shape: tuple[int, ...], stage: int = 0,
             num_stages: int = 2, modules: Sequence[nn.Module] | None = None, inner: str = "dgl",
             momentum: float = MOMENTUM, **inner_opts) -> MANHead:
    """Stage ``stage``'s MAN head: the next stage's first layer copied twice, then ``inner`` ("dgl" or
    "infopro") built for that layer's output shape (from a forward of zeros, modes restored)."""
    layer = _layer(modules, stage, num_stages)
    y_shape = layer_shapes([layer], tuple(feature_shape))[1]
    if inner == "dgl":
        head = DGLHead(y_shape, num_classes, **inner_opts)
    elif inner == "infopro":
        head = InfoProHead(y_shape, num_classes, input_shape, stage=stage, num_stages=num_stages, **inner_opts)
    else:
        raise ValueError(f"unknown MAN inner head {inner!r} (valid: dgl, infopro)")
    return MANHead(layer, head, momentum)


def man_dgl_head(feature_shape, num_classes, input_shape, stage=0, num_stages=2, modules=None,
                 momentum: float = MOMENTUM, **kwargs) -> MANHead:
    """HEADS["man_dgl"]: MAN with DGL's MLP-SR-aux on y."""
    return man_head(feature_shape, num_classes, input_shape, stage, num_stages, modules, "dgl", momentum, **kwargs)


def man_infopro_head(feature_shape, num_classes, input_shape, stage=0, num_stages=2, modules=None,
                     momentum: float = MOMENTUM, **kwargs) -> MANHead:
    """HEADS["man_infopro"]: MAN with InfoPro's reconstruction + SupCon on y (the reference's setting)."""
    return man_head(feature_shape, num_classes, input_shape, stage, num_stages, modules, "infopro", momentum,
                    **kwargs)
