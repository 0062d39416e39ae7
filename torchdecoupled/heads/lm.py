"""Language-model auxiliary heads for token streams: next-token cross-entropy from a stage's output.

For a language model cut into stages (``models.gpt``: Embed, Block..., Head), stage k's output h is the
residual stream, shape (B, T, width), and y holds the targets, int64 (B, T): the next token at every
position. The local loss is the mean cross-entropy over all B * T tokens (``models.gpt.lm_loss``):

    lm          LayerNorm(width) + Linear(width, vocab), trained with the stage          (LMHead)
    lm_frozen   a frozen copy of the last stage's final LayerNorm and Linear, taken when
                the head is built: every stage predicts tokens through the same fixed
                unembedding, which never changes and has no optimizer state              (FrozenLMHead)

The vocabulary size is ``num_classes``. The feature shape is (T, width) per sample.

``lm_frozen`` follows the idea attributed to the 2026 SOLO work (local losses through a frozen copy
of the model's output head). We could not find the paper's text, so the details are ours: the copy
is the last ``nn.LayerNorm`` and the last ``nn.Linear`` among ``modules[-1].modules()`` (for
``models.gpt``, ``Head.ln`` and ``Head.linear``), taken from the stage's initial weights at build time
and kept as buffers (so ``requires_grad`` is False, the optimizer never sees them and they move with
``.to()`` and the state dict); the last stage's own head trains on and drifts away from the copy.
Gradients reach h only.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchdecoupled.heads.base import AuxHead, check_features


def _check_tokens(feature_shape: tuple[int, ...], head: str) -> tuple[int, int]:
    if len(feature_shape) != 2:
        raise ValueError(f"{head} head needs token features of shape (T, width) per sample (got feature_shape "
                         f"{tuple(feature_shape)}): use it on a language model's stages, or a classifying head")
    return int(feature_shape[0]), int(feature_shape[1])


def check_targets(h: torch.Tensor, y: torch.Tensor, head: str) -> None:
    """y must be int64 token ids of shape (B, T), one per position of h (B, T, width)."""
    if y.is_floating_point() or y.is_complex() or tuple(y.shape) != tuple(h.shape[:2]):
        raise ValueError(f"{head} head needs integer next-token targets of shape {tuple(h.shape[:2])} (batch, time) "
                         f"(got {y.dtype} of shape {tuple(y.shape)}): pass token sequences as the labels")


def token_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every token: logits (B, T, V) against y (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class LMHead(AuxHead):
    """LayerNorm + Linear(width, vocab), mean next-token cross-entropy; trained with its stage."""

    name = "lm"

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        width = _check_tokens(self.feature_shape, self.name)[1]
        self.ln = nn.LayerNorm(width)
        self.out = nn.Linear(width, num_classes)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(h))

    def loss(self, h: torch.Tensor, y: torch.Tensor, x0: torch.Tensor | None) -> torch.Tensor:
        check_features(h, self.feature_shape, self.name)
        check_targets(h, y, self.name)
        return token_loss(self.logits(h), y)


def last_of(module: nn.Module, kind: type) -> nn.Module | None:
    """The last submodule of ``module`` (in ``modules()`` order) that is a ``kind``."""
    found = [m for m in module.modules() if isinstance(m, kind)]
    return found[-1] if found else None


class FrozenLMHead(AuxHead):
    """A frozen copy of a LayerNorm + Linear unembedding (buffers), mean next-token cross-entropy."""

    name = "lm_frozen"

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int, ln: nn.LayerNorm, linear: nn.Linear):
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        width = _check_tokens(self.feature_shape, self.name)[1]
        if tuple(ln.normalized_shape) != (width,) or (linear.in_features, linear.out_features) != (width, num_classes):
            raise ValueError(f"lm_frozen copies the last stage's LayerNorm{tuple(ln.normalized_shape)} and "
                             f"Linear({linear.in_features}, {linear.out_features}), but the features are {width} "
                             f"wide and the vocabulary has {num_classes} tokens: they must match")
        self.eps = ln.eps

        def copied(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().clone()

        self.register_buffer("ln_weight", copied(ln.weight))
        self.register_buffer("ln_bias", copied(ln.bias))
        self.register_buffer("weight", copied(linear.weight))
        self.register_buffer("bias", copied(linear.bias))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        z = F.layer_norm(h, (h.shape[-1],), self.ln_weight, self.ln_bias, self.eps)
        return F.linear(z, self.weight, self.bias)

    def loss(self, h: torch.Tensor, y: torch.Tensor, x0: torch.Tensor | None) -> torch.Tensor:
        check_features(h, self.feature_shape, self.name)
        check_targets(h, y, self.name)
        return token_loss(self.logits(h), y)


def frozen_lm_head(feature_shape: tuple[int, ...], num_classes: int, input_shape: tuple[int, ...],
                   stage: int = 0, num_stages: int = 2,
                   modules: Sequence[nn.Module] | None = None) -> FrozenLMHead:
    """The HEADS["lm_frozen"] factory: copies modules[-1]'s last LayerNorm and Linear."""
    if modules is None:
        raise ValueError("head 'lm_frozen' copies the last stage's LayerNorm and Linear: build it through "
                         "stage_head(...) or a Pipeline (they pass modules=), or pass modules=<the stage modules>")
    ln, linear = last_of(modules[-1], nn.LayerNorm), last_of(modules[-1], nn.Linear)
    if ln is None or linear is None:
        raise ValueError(f"lm_frozen copies the last stage's final LayerNorm and Linear, but the last stage "
                         f"({type(modules[-1]).__name__}) has no {'nn.LayerNorm' if ln is None else 'nn.Linear'}: "
                         f"use head 'lm' (a trained LayerNorm + Linear)")
    return FrozenLMHead(feature_shape, num_classes, ln, linear)
