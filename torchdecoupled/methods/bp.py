"""BP: ordinary backpropagation of the same network, one update per batch, no delay (the baseline)."""
from .base import Method, configure

BASE = Method("bp", "bp", paper="Rumelhart, Hinton, Williams. Learning representations by back-propagating errors. Nature 1986")


def make(**opts) -> Method:
    return configure(BASE, ("accumulate",), **opts)
