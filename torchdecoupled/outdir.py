"""The run directory of ``train --out DIR``: a run never writes over another run's results unless told to.

A directory that holds files is refused (``check``) unless it is the run being resumed (``--resume DIR``:
the run goes on writing there) or ``--force`` is given; then ``clear`` deletes the earlier run's outputs
(``RUN_FILES``) before the run starts, so the directory never mixes two runs (other files stay).
``config.toml`` does not count: the CLI saves the run's configuration there before the run starts.

The Python API is not checked: ``Pipeline.fit(out=...)`` writes where it is told (a script that fits
twice into one directory keeps working); ``torchdecoupled.train(RunConfig(...))`` is checked like the CLI.
"""
from __future__ import annotations

import contextlib
import os
import shutil

from .config_file import FILE as CONFIG_FILE

RUN_FILES = ("metrics.jsonl", "metrics.csv", "summary.json", "model.pt", "checkpoint.pt", "timeline.json",
             "timeline.png", "tensorboard")


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check(out: str | None, resume: str | None, force: bool) -> None:
    """A one-line ValueError when ``out`` already holds a run that this one would overwrite, or is a file."""
    if out and os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file, not a directory: choose a directory for the run")
    if not out or force or not os.path.isdir(out) or (resume and _same(resume, out)):
        return
    held = sorted(n for n in os.listdir(out) if n != CONFIG_FILE)
    if held:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise ValueError(f"--out {out!r} already holds a run ({shown}): choose a new --out, continue that run with "
                         f"--resume {out}, or replace it with --force")


def clear(out: str | None, resume: str | None) -> None:
    """Delete the earlier run's outputs from ``out`` (``--force``), unless this run resumes that one."""
    if not out or not os.path.isdir(out) or (resume and _same(resume, out)):
        return
    for name in RUN_FILES:  # under torchrun every rank clears: another may have been first
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
