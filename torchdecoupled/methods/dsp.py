"""DSP, Diversely Stale Parameters: Xu, Huo, Huang. On the Acceleration of Deep Learning Model Parallelism
with Staleness. CVPR 2020 (arXiv:1909.02625, "Diversely Stale Parameters for Efficient Training of CNNs").

FDG's fully decoupled pipeline (d_k = 2(K-1-k), order "bf": staleness 3, 1, 0 for K = 3; "fb": 4, 2, 0)
with recomputation instead of stashing: stage k keeps only the inputs of its 2(K-1-k)+1 in-flight batches
and recomputes a batch's forward with its current weights at the backward. ``beta`` (FDG's gradient
shrinking) is available and off by default.
"""
from .base import Method, configure

BASE = Method("dsp", "decoupled", paper="Xu et al., CVPR 2020, arXiv:1909.02625", order="bf",
              activations="recompute")


def make(**opts) -> Method:
    return configure(BASE, ("beta", "order"), **opts)
