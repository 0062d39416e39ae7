"""The checks of ``Pipeline``'s arguments: each bad value is a one-line ValueError or TypeError naming the
argument and the fix, raised before anything is built."""
from __future__ import annotations

import dataclasses

import torch

from .config import MAX_SEED, MAX_THREADS, MAX_TIMEOUT, check_device
from .methods import METHODS, get_method
from .methods.base import Method

ENGINES = ("sim", "dist")


def check_shared(modules) -> None:
    """A parameter in two stages (tied weights) would train as two copies, one per stage: refuse it."""
    owner: dict[int, tuple[int, str]] = {}
    for k, m in enumerate(modules):
        for name, p in m.named_parameters(remove_duplicate=False):
            first = owner.setdefault(id(p), (k, name))
            if first[0] != k:
                raise ValueError(f"parameter {first[1]!r} of stage {first[0]} is also {name!r} of stage {k}: a tied "
                                 f"parameter cannot span stages (each stage trains its own copy); untie it, or cut "
                                 f"so that its users share a stage (boundaries=[...])")


def check_engine(engine: str, replicas: int, timeout: float, threads: int) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (valid: {', '.join(ENGINES)})")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an integer >= 1 (got {replicas!r})")
    if replicas > 1 and engine != "dist":
        raise ValueError(f"replicas={replicas} needs engine='dist' (the simulator runs one replica)")
    if isinstance(timeout, bool) or not (isinstance(timeout, (int, float)) and 0 < timeout <= MAX_TIMEOUT):
        raise ValueError(f"timeout must be greater than 0 and at most {MAX_TIMEOUT:g} seconds (got {timeout!r})")
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}] (got {threads!r})")


def shown(v) -> str:
    """``v`` for a one-line message: its repr if short, else its type."""
    text = repr(v)
    return text if len(text) <= 60 and "\n" not in text else f"a {type(v).__name__}"


def check_parts(scheduler, criterion, boundaries, batch_keys) -> None:
    for name, fn in (("scheduler", scheduler), ("criterion", criterion)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be a callable or None (got {type(fn).__name__} {fn!r})")
    if boundaries is not None and not isinstance(boundaries, (list, tuple)):
        raise TypeError(f"boundaries must be a list of cut points like [2, 5] (got {type(boundaries).__name__})")
    if not (isinstance(batch_keys, (tuple, list)) and len(batch_keys) == 2 and all(isinstance(k, str) for k in
                                                                                  batch_keys)):
        raise TypeError(f"batch_keys must be two str, the input's and the target's keys (got {batch_keys!r})")


def check_values(method, seed, device, method_opts: dict) -> None:
    """The method's name and options, the seed and the device: their types and ranges, in one line each."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a name like 'fdg' (valid: {', '.join(sorted(METHODS))}; got "
                        f"{type(method).__name__})")
    kinds = {f.name: type(f.default) for f in dataclasses.fields(Method) if f.name not in ("name", "family", "paper")}
    for k, v in method_opts.items():
        kind = kinds.get(k)
        if v is None or kind is None:  # None: the method's default; an unknown name: get_method names it
            continue
        ok = (isinstance(v, (int, float)) if kind is float else isinstance(v, kind)) and not isinstance(v, bool)
        if not ok:
            raise TypeError(f"{k} must be {'a number' if kind is float else 'an integer' if kind is int else 'a str'}"
                            f" (got {shown(v)})")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**48 - 1] (got {seed!r})")
    if device is not None:
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a str like 'cpu' or 'cuda:0' (got {shown(device)})")
        check_device(str(device))


def check_unit(unit):
    """token_unit: what one token of a language model is ("byte", "char", ...), for bits per unit."""
    if unit is not None and not (isinstance(unit, str) and unit.isidentifier()):
        raise ValueError(f"token_unit must be a word such as 'byte' or 'char' (it names the metric "
                         f"bits_per_<unit>), or None (got {unit!r})")
    return unit


def check_local(method, name: str, factory, num_classes) -> None:
    if method.family == "local":
        if num_classes is None:
            raise ValueError(f"method {name!r} trains stages 0..K-2 on auxiliary heads that classify: "
                             f"pass num_classes= (e.g. num_classes=10 for digits)")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2 (got {num_classes!r})")
    elif factory is not None:
        local = sorted(n for n in METHODS if get_method(n).family == "local")
        raise ValueError(f"method {name!r} has no auxiliary heads: head= is for the local-learning "
                         f"methods ({', '.join(local)})")
