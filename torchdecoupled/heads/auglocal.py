"""AugLocal: each stage's auxiliary network is a fresh, uniformly sampled copy of the layers above it.

Ma, Wu, Si, Tan, "Scaling Supervised Local Learning with Augmented Auxiliary Networks", ICLR 2024
(arXiv:2402.17318); reference code github.com/ChenxiangMA/AugLocal: ``networks/auxiliary_nets.py``
(``AuxNetwork``, net_config "unifSamp") and ``networks/resnet.py`` (``LocalResNet``, the pyramid).

The layers are the children of the pipeline's stage modules in order, c_0 .. c_N-1 (a model's blocks).
The network's last child (its classifier, the reference's avgpool + fc) is not a candidate: the
reference's ``net_dim`` lists the stem and the residual blocks, n = N - 1 layers. Stage k ends with
layer l = l_k. Its auxiliary network, for stage k of K with depth d and pyramid coefficient c:

    d_k = max(1, round(d (1 - k c / (K-2)) + k c / (K-2)))          pyramid depth; c = 0.5 in every
                                                                     reference run; K = 2: d_0 = d
    layers  l+1 .. n-1                           if d_k >= n - 1 - l  (all of them; none when l = n-1)
            round(l + (n - l - 1) / d_k * i), i = 1..d_k              otherwise (uniform sampling)
    then    global average pool, [BatchNorm1d if d_k <= 1], Linear(C, classes); cross-entropy

``round`` is Python's (half to even), as in the reference: d = 3, K = 4 gives d_1 = round(2.5) = 2.
The reference divides by K - 2 and so cannot build K = 2 with the pyramid; we take d_0 = d there.

Our choices where the reference is specific to its ResNets:
- fresh copies: each sampled layer is deep-copied and every submodule's ``reset_parameters()`` is
  called (PyTorch's default initialisation, BatchNorm statistics reset), drawing from the head's own
  RNG; no parameter is shared with the model. The reference builds new BasicBlocks of the sampled
  widths and initialises them as the network (conv weights N(0, 2/n)). Parameters of a custom module
  without ``reset_parameters`` keep the copied values (still a separate tensor).
- shape adapters: where the running features do not have the shape the next sampled layer takes
  (a skipped layer changed the width or the resolution), an adapter goes first: adaptive average
  pooling to the layer's spatial size, then a 1x1 conv (no bias) + BatchNorm if the channels differ
  (flat features: a Linear). The reference instead builds that block with stride 2 and a 1x1-conv +
  BatchNorm shortcut; both change width and resolution once, where the network does.
- the shapes each layer takes come from a forward of zeros through the model's own later layers in
  eval mode without gradients (their statistics and modes are left as they were).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from torchdecoupled.heads.base import global_pool
from torchdecoupled.heads.classify import ClassifierHead
from torchdecoupled.heads.flops import head_flops

MODULES_FIX = ("build it through stage_head(...) or a Pipeline (they pass modules=), or pass "
               "modules=<the pipeline's stage modules>")


def pyramid_depths(depth: int, num_stages: int, coeff: float = 0.5) -> list[int]:
    """d_k for the heads of stages k = 0..K-2 (reference ``LocalResNet.aux_depth_list``; K = 2: [depth])."""
    if num_stages == 2:
        return [max(1, round(depth))]
    return [max(1, round(depth * (1 - (k * coeff) / (num_stages - 2)) + (k * coeff) / (num_stages - 2) * 1))
            for k in range(num_stages - 1)]


def sample_layers(layer_index: int, num_layers: int, depth: int) -> list[int]:
    """The layers the reference's ``unifSamp`` copies for the module ending at layer ``layer_index`` of
    ``num_layers`` (the classifier not counted), with depth ``depth``."""
    if depth >= num_layers - 1 - layer_index:
        return list(range(layer_index + 1, num_layers))
    return [round(layer_index + (num_layers - layer_index - 1) / depth * i) for i in range(1, depth + 1)]


def children(module: nn.Module) -> list[nn.Module]:
    """A stage's layers: the children of an nn.Sequential stage; any other module is one layer."""
    return list(module) if isinstance(module, nn.Sequential) else [module]


class GlobalPool(nn.Module):
    """(B, C, *spatial) -> (B, C) by averaging; flat features pass through."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return global_pool(h)


class AugLocalHead(ClassifierHead):
    """Cross-entropy on ``net(h)``: fresh copies of sampled later layers (and adapters), pool, Linear."""

    name = "auglocal"

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int, net: nn.Sequential,
                 layers: Sequence[int], depth: int):
        super().__init__(feature_shape)
        self.net, self.num_classes = net, num_classes
        self.layers, self.depth = tuple(layers), depth  # the sampled layer indices, d_k

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)

    def flops_per_sample(self, batch: int = 8) -> float:
        """FLOPs of one forward + backward of this head per sample (``heads.flops.head_flops``) on
        random features of the head's shape, dtype and device."""
        p = next(self.parameters())
        g = torch.Generator(device=p.device).manual_seed(0)
        h = torch.randn(batch, *self.feature_shape, generator=g, dtype=p.dtype, device=p.device)
        y = torch.arange(batch, device=p.device) % self.num_classes
        return head_flops(self, h, y, None)


def fresh(layer: nn.Module) -> nn.Module:
    """A deep copy of ``layer`` on the CPU with every submodule's parameters re-drawn (``reset_parameters``,
    from the CPU RNG, which ``build_head`` seeds); ``build_head`` moves the head to the features' device."""
    new = copy.deepcopy(layer).cpu()
    for m in new.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return new


def layer_shapes(layers: Sequence[nn.Module], feature_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The per-sample input shape of each of ``layers`` and the last one's output shape, from a forward
    of zeros (batch 2) in eval mode without gradients; every module's mode is restored."""
    shapes = [tuple(feature_shape)]
    p = next((q for m in layers for q in m.parameters() if q.is_floating_point()), None)
    x = torch.zeros(2, *feature_shape, dtype=p.dtype if p is not None else None,
                    device=p.device if p is not None else None)
    with torch.no_grad():
        for layer in layers:
            q = next(layer.parameters(), None)
            x = x if q is None else x.to(q.device)
            modes = [(m, m.training) for m in layer.modules()]
            try:
                x = layer.eval()(x)
            finally:
                for m, mode in modes:
                    m.training = mode
            shapes.append(tuple(x.shape[1:]))
    return shapes


def adapter(have: tuple[int, ...], want: tuple[int, ...], j: int) -> list[nn.Module]:
    """Modules that map features of shape ``have`` onto ``want`` (see the module docstring)."""
    if have == want:
        return []
    if len(want) == 1:
        pool = [GlobalPool()] if len(have) > 1 else []
        return pool + [nn.Linear(have[0], want[0])]
    if len(have) != len(want):
        raise ValueError(f"auglocal cannot feed features of shape {have} to layer {j}, which takes {want}: the "
                         f"sampled layers must keep the rank of the features; use another head (dgl, infopro)")
    rank = len(want) - 1
    out: list[nn.Module] = []
    if have[1:] != want[1:]:
        out.append(nn.AdaptiveAvgPool1d(want[1:]) if rank == 1 else nn.AdaptiveAvgPool2d(want[1:]))
    if have[0] != want[0]:
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if rank == 1 else (nn.Conv2d, nn.BatchNorm2d)
        out += [conv(have[0], want[0], 1, bias=False), bn(want[0])]
    return out


def _check_options(depth, pyramid, modules, num_stages: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"auglocal depth must be an integer >= 1 (got {depth!r}; the reference runs use 1-6)")
    if isinstance(pyramid, bool) or not isinstance(pyramid, (int, float)) or not 0 <= pyramid <= 1:
        raise ValueError(f"auglocal pyramid coefficient must be in [0, 1] (got {pyramid!r}; the reference uses "
                         f"0.5, 0 keeps depth d on every stage)")
    if modules is None:
        raise ValueError(f"head 'auglocal' builds its auxiliary network from the later stages' layers: {MODULES_FIX}")
    if len(modules) != num_stages:
        raise ValueError(f"auglocal got {len(modules)} stage modules for num_stages {num_stages}: pass every stage")


def auglocal_head(feature_shape: tuple[int, ...], num_classes: int, input_shape: tuple[int, ...],
                  stage: int = 0, num_stages: int = 2, modules: Sequence[nn.Module] | None = None,
                  depth: int = 3, pyramid: float = 0.5) -> AugLocalHead:
    """Stage ``stage``'s AugLocal head for features ``feature_shape`` (the HEADS["auglocal"] factory)."""
    _check_options(depth, pyramid, modules, num_stages)
    layers = [c for m in modules for c in children(m)]
    num_layers = len(layers) - 1  # the network's classifier is not a candidate
    layer_index = sum(len(children(m)) for m in modules[:stage + 1]) - 1
    d_k = pyramid_depths(depth, num_stages, pyramid)[stage]
    picked = sample_layers(layer_index, num_layers, d_k)
    shapes = layer_shapes(layers[layer_index + 1:num_layers], tuple(feature_shape))
    have, net = tuple(feature_shape), []
    for j in picked:
        want = shapes[j - layer_index - 1]
        net += adapter(have, want, j) + [fresh(layers[j])]
        have = shapes[j - layer_index]
    net += [GlobalPool()] + ([nn.BatchNorm1d(have[0])] if d_k <= 1 else []) + [nn.Linear(have[0], num_classes)]
    dtype = next((p.dtype for j in picked for p in layers[j].parameters() if p.is_floating_point()), None)
    return AugLocalHead(feature_shape, num_classes, nn.Sequential(*net).to(dtype), picked, d_k)  # the copies' dtype
