"""Text from a finished language-model run (``torchdecoupled sample RUN --prompt TEXT --tokens N``).

The run's zoo model is rebuilt from ``RUN/summary.json`` and loaded from ``RUN/model.pt`` (the final
weights); tokens are drawn one at a time from the softmax of the last position's logits divided by the
temperature, among the ``top_k`` most likely (0: all), from a generator seeded with ``seed``: the same
command gives the same text. The prompt is cropped to the model's context, as is every step's input.
"""
from __future__ import annotations

import math
import os

import torch

from . import checkpoint
from .data.text import decode, encode
from .models import build_model


def load_lm(run_dir: str) -> tuple[torch.nn.Module, int]:
    """(the run's model with its final weights, in eval mode; its context length) for a run on text."""
    from .run import _run_config  # the run directory's reader

    cfg, _ = _run_config(run_dir)
    if cfg.dataset != "text":
        raise ValueError(f"{run_dir!r} is a run on {cfg.dataset!r}, not a language model: sample takes a run of "
                         f"`torchdecoupled train --dataset text --out DIR`")
    model = build_model(cfg.model, 256, (cfg.context,), **cfg.model_opts)
    weights = torch.load(os.path.join(run_dir, checkpoint.MODEL_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(weights)
    return model.eval(), cfg.context


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: torch.Tensor, tokens: int, context: int, *, temperature: float = 1.0,
             top_k: int = 0, seed: int = 0) -> torch.Tensor:
    """``prompt`` (int64 ids, 1-D) followed by ``tokens`` drawn ids."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"--tokens must be an integer >= 0, got {tokens!r}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
        raise ValueError(f"--temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"--top-k must be an integer >= 0 (0: every token), got {top_k!r}")
    if prompt.numel() == 0:
        raise ValueError("--prompt is empty: give at least one character to continue")
    g = torch.Generator().manual_seed(seed)
    ids = prompt.reshape(1, -1)
    for _ in range(tokens):
        logits = model(ids[:, -context:])[0, -1].float() / temperature
        if 0 < top_k < logits.numel():
            cut = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < cut, -math.inf)
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=g)
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0]


def sample(run_dir: str, prompt: str, tokens: int, *, temperature: float = 1.0, top_k: int = 0,
           seed: int = 0) -> str:
    """The prompt and its continuation, as text."""
    model, context = load_lm(run_dir)
    return decode(generate(model, encode(prompt), tokens, context, temperature=temperature, top_k=top_k, seed=seed))
