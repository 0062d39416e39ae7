"""A GPT-style decoder-only language model as a flat sequence of blocks.

Radford, Wu, Child, Luan, Amodei, Sutskever, "Language Models are Unsupervised Multitask Learners"
(GPT-2, 2019), Section 2.3: the Transformer decoder of Vaswani et al. (2017) with layer normalization
moved to the input of each sub-block (pre-LN), an extra layer normalization after the last block, and
the weights of the residual projections scaled by 1/sqrt(N) at initialization (N residual layers).
Attention is Vaswani et al. (2017) Eq. (1), softmax(Q K^T / sqrt(d_k)) V, per head, with a causal
mask, computed by ``torch.nn.functional.scaled_dot_product_attention``. The layout follows nanoGPT
(github.com/karpathy/nanoGPT, model.py): N(0, 0.02) weights, zero biases, GELU MLP of 4x width.

Children of the returned nn.Sequential, each one partitionable unit:
    Embed (token + learned position embedding, dropout), Block x layers, Head (final LN + linear).
The boundary between stages is the residual stream, a float (B, T, width) tensor; the model's input
is int64 token ids (B, T) with T <= context, its output the logits (B, T, vocab).

The input and output embeddings are untied (GPT-2 ties them): Embed sits on the first stage and Head
on the last, so tying would need one weight shared across processes, updated by two stages. We do not
offer tying; it costs vocab x width extra parameters (33K for a byte vocabulary at width 128).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Embed(nn.Module):
    """Token ids (B, T) -> token embedding + position embedding, then dropout: (B, T, width)."""

    def __init__(self, vocab: int, context: int, width: int, dropout: float):
        super().__init__()
        self.context = context
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.is_floating_point() or idx.is_complex() or idx.dim() != 2:
            raise TypeError(f"gpt takes integer token ids of shape (batch, time), got {idx.dtype} of shape "
                            f"{tuple(idx.shape)}: pass the int64 tokens uncast")
        if idx.shape[1] > self.context:
            raise ValueError(f"sequence of {idx.shape[1]} tokens is longer than the model's context "
                             f"{self.context}: cut it, or build the model with in_shape=({idx.shape[1]},)")
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.drop(self.tokens(idx) + self.positions(pos))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017, Eq. 1 per head), then a projection."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        # (B, T, 3C) -> three (B, heads, T, C / heads)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    """Linear(width, ratio * width) - GELU - Linear(ratio * width, width) - dropout."""

    def __init__(self, width: int, ratio: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(width, ratio * width)
        self.proj = nn.Linear(ratio * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN Transformer block (GPT-2 Section 2.3): x + attn(LN(x)), then + mlp(LN(.)). Never in place."""

    def __init__(self, width: int, heads: int, dropout: float, mlp_ratio: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Head(nn.Module):
    """Final LayerNorm (GPT-2 Section 2.3) and the output embedding: (B, T, width) -> logits (B, T, vocab)."""

    def __init__(self, width: int, vocab: int):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.linear = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.ln(x))


def _check(name: str, value, low: float = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"gpt {name} must be an integer >= {low}, got {value!r}")


def _init_weights(model: nn.Sequential, layers: int) -> None:
    # nanoGPT's _init_weights: N(0, 0.02) for Linear and Embedding weights, zero biases (LayerNorm keeps
    # weight 1, bias 0); GPT-2 Section 2.3: residual projections scaled by 1/sqrt(N), N = 2 * layers.
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
    for block in model:
        if isinstance(block, Block):
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * layers))


def gpt(num_classes: int, in_shape: tuple[int, ...], *, layers: int = 4, width: int = 128, heads: int = 4,
        dropout: float = 0.0, mlp_ratio: int = 4) -> nn.Sequential:
    """GPT of `layers` blocks for a vocabulary of `num_classes` tokens and in_shape (context,)."""
    in_shape = tuple(in_shape)
    if len(in_shape) != 1:
        raise ValueError(f"gpt needs in_shape (context,), the longest token sequence, got {in_shape}")
    for name, value in (("context", in_shape[0]), ("vocabulary size (num_classes)", num_classes),
                        ("layers", layers), ("width", width), ("heads", heads), ("mlp_ratio", mlp_ratio)):
        _check(name, value)
    if width % heads:
        raise ValueError(f"gpt width {width} is not divisible by heads {heads}: choose heads dividing the width "
                         f"(e.g. heads={max(h for h in range(1, heads) if width % h == 0)})")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"gpt dropout must be a probability in [0, 1), got {dropout!r}")
    dropout = float(dropout)
    blocks: list[nn.Module] = [Embed(num_classes, in_shape[0], width, dropout)]
    blocks += [Block(width, heads, dropout, mlp_ratio) for _ in range(layers)]
    blocks.append(Head(width, num_classes))
    model = nn.Sequential(*blocks)
    _init_weights(model, layers)
    return model


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every token: logits (B, T, V) against targets (B, T)."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"lm_loss needs logits of shape targets.shape + (vocab,): got logits "
                         f"{tuple(logits.shape)}, targets {tuple(targets.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
