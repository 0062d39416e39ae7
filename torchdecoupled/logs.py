"""The epoch records in two more forms, beside metrics.jsonl: ``metrics.csv`` (a table for spreadsheets and
pandas, one row per epoch) and TensorBoard event files in ``tensorboard/`` (optional: the ``tensorboard``
package). :class:`torchdecoupled.metrics.MetricsWriter` writes them.

Columns and tags come from the record's structure: a per-stage list ``"lr": [a, b]`` becomes the columns
``lr_0, lr_1`` and the tags ``lr/stage_0, lr/stage_1``; ``"staleness": {"mean": [...]}`` becomes
``staleness_mean_0`` and ``staleness_mean/stage_0``; a split's metric ``test_loss`` becomes the tag
``loss/test`` (next to ``loss/train`` in one TensorBoard chart).
"""
from __future__ import annotations

import csv
import glob
import numbers
import os
from typing import Sequence

SPLITS = ("train", "test", "val")
TENSORBOARD_INSTALL = "pip install 'torchdecoupled[tensorboard]' (or: pip install tensorboard)"


def flatten(rec: dict, prefix: str = "") -> dict:
    """One epoch record as flat columns: lists are numbered, dicts joined with ``_``."""
    flat = {}
    for key, value in rec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}_"))
        elif isinstance(value, (list, tuple)):
            flat.update(flatten(dict(enumerate(value)), f"{name}_"))
        else:
            flat[name] = value
    return flat


class CsvLog:
    """``metrics.csv``: the header is the first record's columns. A later record with a column the header
    lacks (a metric that starts mid-run) rewrites the file with the column appended, the earlier rows left
    empty there; a record without a column leaves its cell empty. So every row matches the header."""

    def __init__(self, path: str, records: Sequence[dict] = ()):
        self.path, self.columns, self.rows = path, [], []
        for rec in records:
            self._add(flatten(rec))
        self._rewrite()

    def epoch(self, rec: dict) -> None:
        row = flatten(rec)
        if self._add(row):
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def _add(self, row: dict) -> bool:
        """Keep the row; True if it brought new columns."""
        new = [c for c in row if c not in self.columns]
        self.columns += new
        self.rows.append(row)
        return bool(new)

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)  # a reader never sees half a file


def scalars(rec: dict) -> dict[str, float]:
    """The TensorBoard tags and values of one epoch record (numbers only; ``epoch`` is the step)."""
    out = {}
    for key, value in rec.items():
        if key == "epoch":
            continue
        for name, v in (value.items() if isinstance(value, dict) else [("", value)]):
            tag = f"{key}_{name}" if name else key
            if isinstance(v, (list, tuple)):
                out.update({f"{tag}/stage_{k}": x for k, x in enumerate(v) if _number(x)})
            elif _number(v):
                split, _, metric = tag.partition("_")
                out[f"{metric}/{split}" if split in SPLITS and metric else tag] = v
    return out


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def require_tensorboard() -> None:
    """Raise ImportError with the install command if TensorBoard's writer cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise ImportError(f"tensorboard=True needs the tensorboard package ({e}): {TENSORBOARD_INSTALL}") from e


class TensorBoardLog:
    """Event files in ``logdir``: every scalar of every epoch record, at step ``epoch + 1`` (epochs done, as
    on the x axis of ``torchdecoupled plot``). Starts afresh: earlier event files there are removed, and
    ``records`` (the epochs before a resume) are written again."""

    def __init__(self, logdir: str, records: Sequence[dict] = ()):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(logdir, exist_ok=True)
        for old in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
            os.remove(old)
        self.writer = SummaryWriter(logdir)
        for rec in records:
            self.epoch(rec)

    def epoch(self, rec: dict) -> None:
        for tag, value in scalars(rec).items():
            self.writer.add_scalar(tag, value, rec["epoch"] + 1)
        self.writer.flush()  # on disk now: a stage process ends with os._exit, no teardown

    def close(self) -> None:
        self.writer.close()
