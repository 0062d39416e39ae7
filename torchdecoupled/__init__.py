"""torchdecoupled: decoupled learning (delayed gradients, local losses) for PyTorch.

Public surface: ``Pipeline`` (your model, your optimizer, either engine), ``RunConfig`` + ``train``
(the CLI's runs), ``Schedule`` (schedules as data), ``get_method`` / ``METHODS`` (the registry).
"""
from .config import RunConfig
from .methods import METHODS, get_method
from .pipeline import Pipeline
from .run import train
from .schedule import Schedule, format_grid, validate

__all__ = ["METHODS", "Pipeline", "RunConfig", "Schedule", "format_grid", "get_method", "train", "validate"]
