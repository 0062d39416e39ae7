"""Model zoo: every model is a flat nn.Sequential of blocks, one partitionable unit per child.

A pipeline cuts only between children, so each child is a whole block (a residual block keeps its
shortcut inside) and no child modifies its input tensor in place. `build_model` looks names up in a
plain dict; build under `torch.manual_seed(s)` for reproducible weights.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from torchdecoupled.models.cnn import cnn1d, cnn2d
from torchdecoupled.models.gpt import gpt, lm_loss
from torchdecoupled.models.mlp import mlp
from torchdecoupled.models.resnet import resnet
from torchdecoupled.models.resnet1d import resnet1d
from torchdecoupled.models.revnet import revnet, revnet1d
from torchdecoupled.models.wrn import wrn

# name -> (builder, fixed keyword arguments)
MODELS: dict[str, tuple[Callable[..., nn.Sequential], dict[str, Any]]] = {
    "mlp": (mlp, {}),
    "cnn1d": (cnn1d, {}),
    "cnn1d_bn": (cnn1d, {"batchnorm": True}),
    "cnn2d": (cnn2d, {}),
    "resnet": (resnet, {}),
    **{f"resnet{d}": (resnet, {"depth": d}) for d in (20, 32, 44, 56, 110, 1202)},
    "resnet1d": (resnet1d, {}),
    **{f"resnet1d_{d}": (resnet1d, {"depth": d}) for d in (20, 32, 44)},
    "wrn": (wrn, {}),
    "wrn16_4": (wrn, {"depth": 16, "width": 4}),
    "wrn28_10": (wrn, {"depth": 28, "width": 10}),
    "gpt": (gpt, {}),
    "gpt_mini": (gpt, {"layers": 6, "width": 128, "heads": 4}),
    "gpt_small": (gpt, {"layers": 12, "width": 768, "heads": 12}),
    "revnet": (revnet, {}),
    "revnet18": (revnet, {"width": 64, "blocks": (2, 2, 2, 2)}),
    "revnet_mini": (revnet, {"width": 16, "blocks": (4, 4)}),
    "revnet1d": (revnet1d, {}),
}


def build_model(name: str, num_classes: int, in_shape: tuple[int, ...], **kwargs: Any) -> nn.Sequential:
    """Build model `name` for inputs of shape `in_shape` (no batch dimension) and `num_classes` outputs.

    Extra keyword arguments go to the builder (e.g. `hidden=(128,)` for "mlp", `depth`/`width`/`dropout`
    for "wrn", `depth` for "resnet", `depth`/`channels` for "resnet1d", `layers`/`width`/`heads`/`dropout` for "gpt", whose `num_classes` is
    the vocabulary size and `in_shape` is (context,)); a named variant such as "resnet56" fixes its depth.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (valid: {', '.join(sorted(MODELS))})")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    in_shape = tuple(int(s) for s in in_shape)
    if not in_shape or any(s < 1 for s in in_shape):
        raise ValueError(f"in_shape must be non-empty positive sizes without the batch dimension, got {in_shape}")
    builder, fixed = MODELS[name]
    clash = sorted(set(fixed) & set(kwargs))
    if clash:
        raise ValueError(
            f"model {name!r} fixes {', '.join(f'{k}={fixed[k]}' for k in clash)}; "
            f"use the generic {builder.__name__!r} model to choose {', '.join(clash)}"
        )
    return builder(int(num_classes), in_shape, **fixed, **kwargs)


__all__ = ["MODELS", "build_model", "lm_loss"]
