"""DDG: Huo, Gu, Yang, Huang. Decoupled Parallel Backpropagation with Convergence Guarantee. ICML 2018.

Forward-locked; stage k applies the gradient of batch t-(K-1-k) in tick t (d_k = K-1-k), computed on the
stashed graph and weights of that batch's forward.
"""
from .base import Method, configure

BASE = Method("ddg", "locked", paper="Huo et al., ICML 2018, arXiv:1804.10574", activations="stash")


def make(**opts) -> Method:
    return configure(BASE, (), **opts)
