"""docs/cli.md, generated from the command line's own parser, so the reference cannot drift.

    python -m torchdecoupled.cli_reference > docs/cli.md     # tests/test_cli_reference.py checks it
"""
from __future__ import annotations

import argparse
import os

WIDTH = "100"  # argparse wraps help to $COLUMNS: fixed, so the page does not depend on the terminal


def reference() -> str:
    from .cli import parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        top = parser()
        subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        parts = ["# Command-line reference", "",
                 "Generated from the parser by `python -m torchdecoupled.cli_reference > docs/cli.md`; every "
                 "option's default is in its help.", "", "```", top.format_help().rstrip(), "```", ""]
        for name, sub in subs.choices.items():
            parts += [f"## `torchdecoupled {name}`", "", "```", sub.format_help().rstrip(), "```", ""]
        return "\n".join(parts)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


if __name__ == "__main__":
    print(reference(), end="")
