"""Where a resumed run starts, in either engine: after its checkpoint's tick, or past a finished run's end.

A checkpoint taken mid-run (``finished`` False) continues its own schedule from the next tick, bit for
bit. A checkpoint taken after the last tick holds a drained pipeline (every batch's gradient applied at
every stage): resumed with the same number of epochs there is nothing left to run; resumed with more, a
new schedule runs the epochs it lacks on the same stages (weights, optimizer, scheduler and predictor
state kept), filled and drained like any run. Epoch e of that schedule is epoch ``first_epoch + e`` of
the run: its records continue the numbering and it reads that epoch's batches (``LaterEpochs``), so the
zoo's data shuffles each epoch as an uninterrupted run would. The weights are not an uninterrupted
longer run's, which would not have drained at the old end (except under BP, which never has batches in
flight); and within the new schedule the stages count batches from 0 again, so dropout draws the masks
of the run's first batches.

Each ``fit`` (``checkpoint=True``) writes ``first_epoch``, ``epochs`` and ``finished`` into its
checkpoints (``checkpoint.make``); ``start`` reads them back.
"""
from __future__ import annotations

from dataclasses import dataclass

from .data.loader import LoaderBatches


@dataclass(frozen=True)
class Start:
    first_epoch: int = 0   # epochs run before the schedule this run runs (a finished run it extends)
    first_tick: int = 0    # that schedule's first tick to run


def start(state: dict | None, epochs: int, method=None) -> Start:
    """Where a run of ``epochs`` epochs in all resumes from ``state`` (a checkpoint, or None: a fresh run).
    A ValueError when a finished run cannot become this one (fewer epochs, or a warm-up to redo)."""
    if state is None:
        return Start()
    first = state.get("first_epoch", 0)
    if not state.get("finished"):
        return Start(first, state["tick"] + 1)
    done = state["epochs"]
    if epochs == done:
        return Start(first, state["tick"] + 1)  # one past the last tick: nothing left to run
    if epochs < done:
        raise ValueError(f"the checkpoint holds a finished {done}-epoch run: resume it with epochs={done} "
                         f"(nothing more to run) or more (to extend it), not {epochs}")
    if method is not None and method.warmup_epochs > 0:
        raise ValueError(f"the checkpoint holds a finished {done}-epoch run of {method.describe()}, whose learning-"
                         f"rate warm-up counts the batches of a schedule and would start again in the epochs "
                         f"added: it cannot be extended to {epochs} epochs; train afresh with that many")
    return Start(done, 0)


class LaterEpochs:
    """The training data from epoch ``first_epoch`` on: batch b here is batch ``first_epoch * per_epoch + b``
    there, read, released and closed there."""

    def __init__(self, data, first_epoch: int):
        self.data, self.per_epoch = data, data.per_epoch
        self.offset = first_epoch * data.per_epoch

    def get(self, b: int):
        return self.data.get(self.offset + b)

    def release_before(self, b: int) -> None:
        if hasattr(self.data, "release_before"):
            self.data.release_before(self.offset + b)

    def close(self) -> None:
        if hasattr(self.data, "close"):
            self.data.close()


def later_epochs(data, first_epoch: int):
    """``data`` for a run that starts at ``first_epoch``: random-access data (the zoo's ``Batches``) from that
    epoch on; a loader of the user's (``LoaderBatches``) as it is: it is iterated anew, in its own order,
    rather than read through every earlier epoch."""
    if first_epoch == 0 or isinstance(data, LoaderBatches):
        return data
    return LaterEpochs(data, first_epoch)
