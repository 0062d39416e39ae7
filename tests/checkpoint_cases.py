"""Mid-run checkpoints for the resume tests: a run with --checkpoint keeps only its last one (after the last
epoch, a drained pipeline), so a test that resumes in the middle takes an earlier one as a crash leaves it."""
import os
import shutil

from torchdecoupled import checkpoint
from torchdecoupled.methods import get_method
from torchdecoupled.schedule import Schedule, eval_ticks

FAULT = "TORCHDECOUPLED_FAULT"


def keep_each_checkpoint(monkeypatch):
    """The simulator's checkpoints, each kept: returns ``after(run_dir, epoch)``, a new run directory holding
    the checkpoint the run wrote after that epoch, as a run stopped there would have left it."""
    real = checkpoint.save

    def save(path, stages, transport, tick, records, *args):
        real(path, stages, transport, tick, records, *args)
        shutil.copy(path, f"{path}.{len(records) - 1}")

    monkeypatch.setattr(checkpoint, "save", save)

    def after(run_dir, epoch) -> str:
        stopped = f"{run_dir}-after-epoch-{epoch}"
        os.makedirs(stopped)
        shutil.copy(f"{checkpoint.in_dir(str(run_dir))}.{epoch}", checkpoint.in_dir(stopped))
        return stopped

    return after


def stop_after_epoch(cfg, epoch: int, batches_per_epoch: int) -> str:
    """``TORCHDECOUPLED_FAULT`` for a distributed run of ``cfg``: stage 0 (rank 0 writes the checkpoints; its
    other replicas wait on it in every update's gradient average) exits halfway between the checkpoint of
    ``epoch`` and the next."""
    m = get_method(cfg.method, **cfg.method_opts)
    schedule = Schedule(m.family, cfg.stages, cfg.epochs * batches_per_epoch, m.order, m.accumulate)
    ticks = sorted(eval_ticks(schedule, batches_per_epoch, cfg.epochs))
    return f"0:{(ticks[epoch] + ticks[epoch + 1]) // 2 + 1}:exit"
