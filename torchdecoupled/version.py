"""This copy's version (``torchdecoupled --version``): the installed package's metadata, else the
pyproject.toml of a source checkout run without installing."""
from __future__ import annotations

import importlib.metadata
import os
import tomllib

PYPROJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")


def version() -> str:
    """"X.Y.Z", or "unknown" where neither the metadata nor pyproject.toml is there."""
    try:
        return importlib.metadata.version("torchdecoupled")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with open(PYPROJECT, "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"
