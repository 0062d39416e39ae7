"""FR, Features Replay: Huo, Gu, Huang. Training Neural Networks Using Features Replay. NeurIPS 2018
(arXiv:1807.04511).

DDG's forward-locked pipeline (d_k = K-1-k) with recomputation: stage k keeps only the inputs of its
in-flight batches and, at the backward of batch t-(K-1-k), replays their forward with its current weights,
then backpropagates the gradient received from above. (The authors' code gives stage 0 twice the
learning rate; we do not.)
"""
from .base import Method, configure

BASE = Method("fr", "locked", paper="Huo et al., NeurIPS 2018, arXiv:1807.04511", activations="recompute")


def make(**opts) -> Method:
    return configure(BASE, (), **opts)
