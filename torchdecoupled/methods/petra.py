"""PETRA: Rivaud, Fournier, Pumir, Belilovsky, Eickenberg, Oyallon. PETRA: Parallel End-to-end Training
with Reversible Architectures. ICLR 2025 (arXiv:2406.02052); reference code github.com/stephane-rivaud/PETRA.

DSP's fully decoupled pipeline (d_k = 2(K-1-k); no weight stash) where a reversible stage keeps no input
either (paper eq. 5, Alg. 1), ``activations="reverse"``:

- F of batch b at stage k: ``x_k = F_k(x_{k-1})`` without a graph; a reversible stage stores nothing,
  a non-reversible one (a downsampling block, the stem) stores its input as DSP does;
- B of batch b, on receiving ``(x~_k, delta_{k+1})`` from stage k+1: a reversible stage rebuilds its
  input ``x~_{k-1} = F_k^{-1}(x~_k)`` with its current weights (``torchdecoupled.reversible``), a
  non-reversible one takes its stored input; both recompute ``F_k(x~_{k-1})`` with a graph, sum the
  parameter gradient and send ``(x~_{k-1}, delta_k)`` down (the reference sends the stored input as
  ``x~`` from a non-reversible stage, and the last stage sends the input it received);
- the last stage does F, loss and B at once; every stage updates after ``accumulate`` backwards (the
  paper's k), summing the gradients as ADL does (the reference's default, ``--accumulation-averaging``
  off; to average, divide the learning rate by k);
- order "fb" by default: in a tick, F then B then U, so the forward and the rebuild of a tick use the
  same weights theta^t (eq. 5; the reference's ``forward_and_update`` runs all forwards, then the
  backwards, then the updates). "bf" is available.

BatchNorm: running statistics move once per batch, at F (our engine's rule, and what the reference
evaluates with: its forward pass updates the statistics it uses at test time); the rebuild and the
recompute run on copies of the buffers with batch statistics. With no reversible stage (a model
without reversible blocks) PETRA is exactly DSP with the same order.
"""
from .base import Method, configure

BASE = Method("petra", "decoupled", paper="Rivaud et al., ICLR 2025, arXiv:2406.02052", order="fb",
              activations="reverse")


def make(**opts) -> Method:
    return configure(BASE, ("accumulate", "order", "warmup_epochs"), **opts)
