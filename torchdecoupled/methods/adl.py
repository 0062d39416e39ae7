"""ADL: Zhuang, Weng, Luo, Toh, Li, Lin. Accumulated Decoupled Learning with Gradient Staleness Mitigation
for Convolutional Neural Networks. ICML 2021.

FDG's pipeline and beta plus module-wise gradient accumulation: every stage sums (no division) the
gradients of M consecutive backwards, then updates once; staleness in updates falls about M-fold.
Optional linear learning-rate warm-up (the paper: 5 epochs from 0.01 * lr). Order "bf" is the paper's
mode B, "fb" its mode A (whose staleness figure the tests reproduce).
"""
from .base import Method, configure

BASE = Method("adl", "decoupled", paper="Zhuang et al., ICML 2021, PMLR 139", accumulate=2)


def make(**opts) -> Method:
    return configure(BASE, ("accumulate", "beta", "order", "warmup_epochs"), **opts)
