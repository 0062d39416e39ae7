"""The method registry: name -> factory(**options) -> Method. Semantics: shared/spec/methods.md."""
from __future__ import annotations

from . import adl, auglocal, bp, ddg, dsp, dtrp, fdg, fr, local, man, petra
from .base import Method

METHODS = {
    "bp": bp.make,
    "ddg": ddg.make,
    "fdg": fdg.make,
    "adl": adl.make,
    "fr": fr.make,
    "dsp": dsp.make,
    "dtrp": dtrp.make,
    "petra": petra.make,
    "dgl": local.make_dgl,
    "infopro": local.make_infopro,
    "local": local.make_local,
    "auglocal": auglocal.make,
    "man": man.make,
}


def get_method(name: str, **opts) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (valid: {', '.join(sorted(METHODS))})")
    return METHODS[name](**opts)


__all__ = ["METHODS", "Method", "get_method"]
