"""torchdecoupled: decoupled learning (delayed gradients, local losses) for PyTorch.

Public surface: ``Pipeline`` (your model, your optimizer, either engine), ``RunConfig`` + ``train``
(the CLI's runs), ``Schedule`` (schedules as data), ``get_method`` / ``METHODS`` (the registry),
``StageInfo`` (what a stage-aware optimizer factory is told), ``plan`` (the planner: docs/planner.md).
"""
from .config import RunConfig
from .methods import METHODS, get_method
from .optim import StageInfo
from .pipeline import Pipeline
from . import plan  # callable: plan(model, sample, stages=..., method=...)
from .run import train
from .schedule import Schedule, format_grid, validate

__all__ = ["METHODS", "Pipeline", "RunConfig", "Schedule", "StageInfo", "format_grid", "get_method", "plan", "train",
           "validate"]
