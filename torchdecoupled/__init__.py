"""torchdecoupled: decoupled learning (delayed gradients, local losses) for PyTorch.

Public surface: ``Pipeline`` (your model, your optimizer), ``RunConfig`` + ``train`` (the CLI's runs),
``Schedule`` (schedules as data), ``get_method`` / ``METHODS`` (the registry).
"""
from .api import Pipeline
from .config import RunConfig
from .methods import METHODS, get_method
from .schedule import Schedule, format_grid, validate


def train(config: RunConfig) -> dict:
    """Run one training job (simulator or distributed engine); returns the summary."""
    from .train import train as _train
    return _train(config)


__all__ = ["METHODS", "Pipeline", "RunConfig", "Schedule", "format_grid", "get_method", "train", "validate"]
