"""Run configurations in files: ``--config FILE`` (TOML; YAML with PyYAML installed) and the ``OUT/config.toml``
a run saves, which ``train --config OUT/config.toml`` reads back to repeat the run.

The keys are the options' names with underscores, which are ``RunConfig``'s field names (``batch_size = 64``
for ``--batch-size 64``), with the method options at the top level (beta, accumulate, order, warmup_epochs,
predictor, head). Comma-separated options are lists (``milestones = [150, 225]``, compare's ``methods``);
``model_opts`` is a table. A key left out keeps its default (TOML has no null)::

    method = "adl"
    accumulate = 4
    stages = 3
    dataset = "mnist1d"
    milestones = [20, 30]
"""
from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import asdict, fields

from .config import RunConfig
from .methods.base import Method

FILE = "config.toml"
FORMATS = (".toml", ".yaml", ".yml")
METHOD_OPTS = ("beta", "accumulate", "order", "warmup_epochs", "predictor", "head")
ALLOWED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
           tuple: "a list of integers like [150, 225]", list: 'a list of strings like ["bp", "fdg"]', dict: "a table"}
HEADER = ("# torchdecoupled run configuration, resolved (dataset defaults filled in).\n"
          "# Repeat the run: torchdecoupled train --config THIS_FILE (command-line options override it).\n")


def _kind(hint) -> type:
    """The type a field's annotation asks for: ``str | None`` -> str, ``tuple[int, ...]`` -> tuple."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _keys() -> dict[str, type]:
    run, method = typing.get_type_hints(RunConfig), typing.get_type_hints(Method)
    keys: dict[str, type] = {}
    for f in fields(RunConfig):
        if f.name == "method_opts":
            keys.update({k: _kind(method[k]) for k in METHOD_OPTS})
        else:
            keys[f.name] = _kind(run[f.name])
    return keys


KEYS = _keys()  # train's keys and their types, in RunConfig's order


def _valid(value, kind: type) -> bool:
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    checks = {bool: lambda v: isinstance(v, bool), int: lambda v: number(v) and isinstance(v, int), float: number,
              str: lambda v: isinstance(v, str), dict: lambda v: isinstance(v, dict),
              tuple: lambda v: isinstance(v, list) and all(number(x) and isinstance(x, int) for x in v),
              list: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)}
    return checks[kind](value)


def _yaml_hint(path: str, value, kind: type) -> str:
    """PyYAML (YAML 1.1) reads a number without a dot, such as 5e-4, as a string."""
    if kind not in (int, float) or not isinstance(value, str) or os.path.splitext(path)[1].lower() == ".toml":
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return f" (YAML reads {value} as a string: write it with a dot, e.g. 5.0e-4)"


def check(path: str, data, keys: dict[str, type]) -> dict:
    """``data`` type-checked against ``keys`` (a ValueError naming the key, the value and what is allowed)."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected keys and values at the top level, got {type(data).__name__} {data!r}")
    out = {}
    for key, value in data.items():
        if key not in keys:
            near = difflib.get_close_matches(str(key), keys, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            if key == "method_opts":
                hint = "method options are keys of their own: beta = 0.5, accumulate = 4; "
            raise ValueError(f"{path}: unknown key {key!r} ({hint}valid: {', '.join(sorted(keys))})")
        kind = keys[key]
        if not _valid(value, kind):
            raise ValueError(f"{path}: {key} = {value!r} is not {ALLOWED[kind]}{_yaml_hint(path, value, kind)}")
        out[key] = float(value) if kind is float else tuple(value) if kind is tuple else value
    return out


def read(path: str, keys: dict[str, type] = KEYS) -> dict:
    """The options a TOML or YAML file gives, by key, type-checked; ranges are ``RunConfig.resolved``'s job."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"--config {path!r}: unknown format {ext or '(no extension)'!r} (valid: {', '.join(FORMATS)})")
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    if ext == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    else:
        data = _yaml(path, text)
    return check(path, {} if data is None else data, keys)


def _yaml(path: str, text: str):
    try:
        import yaml
    except ImportError:
        raise ValueError(f"reading {path} needs PyYAML: pip install pyyaml (or write the file as .toml)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None


def to_config(flat: dict) -> RunConfig:
    """Keys as ``read`` returns them (method options at the top level) -> a RunConfig."""
    opts = {k: flat[k] for k in METHOD_OPTS if k in flat}
    return RunConfig(**{k: v for k, v in flat.items() if k not in METHOD_OPTS}, method_opts=opts)


def _items(cfg: RunConfig) -> list[tuple[str, object]]:
    """(key, value) in file order: method options after the method, None left out, model_opts apart;
    ``force`` left out (a repeated run must not replace a run directory unasked)."""
    items = []
    for k, v in asdict(cfg).items():
        if k == "force":
            continue
        if k == "method_opts":
            items += [(o, v[o]) for o in METHOD_OPTS if v.get(o) is not None]
        elif v is not None and k != "model_opts":
            items.append((k, v))
    return items


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)  # a float's repr reads back to the same float; inf and nan are TOML too
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")  # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"config value {v!r} ({type(v).__name__}) has no TOML form (valid: bool, int, float, str, "
                    f"and lists of them)")


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml(k)


def dumps(cfg: RunConfig) -> str:
    """``cfg`` as the TOML text ``read`` takes back to the same RunConfig."""
    lines = [f"{k} = {_toml(v)}" for k, v in _items(cfg)]
    if cfg.model_opts:
        lines += ["", "[model_opts]"] + [f"{_key(k)} = {_toml(v)}" for k, v in cfg.model_opts.items()]
    return HEADER + "\n".join(lines) + "\n"


def write(cfg: RunConfig, directory: str) -> str:
    """Save ``cfg`` as ``directory/config.toml`` (atomically: every rank under torchrun may write it)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps(cfg))
    os.replace(tmp, path)
    return path


def one_line(cfg: RunConfig) -> str:
    """``cfg`` on one line, as the file's key = value pairs."""
    items = _items(cfg) + ([("model_opts", cfg.model_opts)] if cfg.model_opts else [])
    return ", ".join(f"{k}={v if isinstance(v, dict) else _toml(v)}" for k, v in items)
