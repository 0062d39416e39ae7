"""The planner: with K stages on these devices and this network, how fast, how much memory, where to cut?

A discrete-event simulation (``events``) of the method's own Schedule, with per-layer costs measured here or
read from a cost file (``costs``), links from presets or numbers (``links``); ``plan`` searches the cut
(``search``) for every K. ``torchdecoupled plan`` is its command line (``cli``). Validation against the
distributed engine and worked examples: docs/planner.md.

The package is callable: ``torchdecoupled.plan(model, sample, ...)`` is ``torchdecoupled.plan.plan``, and
``torchdecoupled.plan.costs`` etc. stay importable.
"""
import sys
import types

from .api import DATASET_SHAPES, PlanResult, plan, zoo_inputs
from .costs import Costs, LayerCost, load, measure, save
from .events import Timing, simulate
from .links import LINKS, Link, get_link

__all__ = ["DATASET_SHAPES", "LINKS", "Costs", "LayerCost", "Link", "PlanResult", "Timing", "get_link", "load",
           "measure", "plan", "save", "simulate", "zoo_inputs"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
