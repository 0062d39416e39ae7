"""FDG: Zhuang, Wang, Liu, Lin. Fully Decoupled Neural Network Learning Using Delayed Gradients.
IEEE TNNLS 33(10), 2021 (arXiv:1906.09108).

Fully decoupled (d_k = 2(K-1-k)), order "bf", weight-stashed delayed backward, and gradient shrinking:
stage k < K-1 multiplies the gradient it receives by beta, so its gradients carry beta^(K-1-k).
"""
from .base import Method, configure

BASE = Method("fdg", "decoupled", paper="Zhuang et al., IEEE TNNLS 2021, arXiv:1906.09108", order="bf")


def make(**opts) -> Method:
    return configure(BASE, ("beta", "order"), **opts)
