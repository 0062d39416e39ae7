"""Checkpoints of a distributed run: the simulator's file (``checkpoint.py``), written by rank 0.

A checkpoint is taken after the same ticks as in the simulator (each evaluation tick, the last too). A
message sent in tick t is used in tick t + 1 or later (or, forward-locked, within tick t after its
sender), so once a process has finished tick t, everything its neighbours will ever send it up to tick t
is already on its way: each process receives those messages it has not used yet (they are the
simulator's mailbox, split by receiver) and hands them, with its stage's state, to rank 0
(``gather_object``), which writes replica r's pipeline as ``replicas[r]`` and replaces the file
atomically. The messages stay where ``recv`` finds them, and the run goes on.

On resume every process reads the file (memory-mapped: it restores only its own stage's part, but verifying
the checksum reads all of it once; under torchrun every machine needs the file at the --resume path),
restores its stage, keeps the messages addressed to it as already received, and plans its channels from
the next tick on (``MessagePlan.start``).
"""
from __future__ import annotations

import torch.distributed as dist

from .. import checkpoint
from .dist_layout import collective


def _cpu(obj):
    return checkpoint.map_tensors(lambda t: t.detach().cpu(), obj)


def save(proc, tick: int) -> None:
    """Every rank: hand this stage's state and unused messages to rank 0, which writes the checkpoint."""
    layout = proc.layout
    mine = {"stage": layout.stage, "replica": layout.replica, "state": _cpu(checkpoint.stage_state(proc.stage)),
            "messages": _cpu(proc.transport.unconsumed(tick))}
    everyone = [None] * layout.world_size if layout.rank == 0 else None
    collective(f"gathering the checkpoint after tick {tick}", dist.gather_object, mine, everyone, dst=0)
    if everyone is None:
        return
    replicas = [{"stages": [None] * layout.stages, "messages": {}} for _ in range(layout.replicas)]
    for item in everyone:
        replicas[item["replica"]]["stages"][item["stage"]] = item["state"]
        replicas[item["replica"]]["messages"].update(item["messages"])
    job = proc.job
    run = (job.epochs, proc.first_epoch, tick == proc.schedule.num_ticks - 1)
    state = checkpoint.make(tick, proc.records, job.info, replicas, job.boundaries, job.per_epoch, run)
    checkpoint.write(checkpoint.in_dir(job.out), state)


def read(job, device: str) -> dict:
    """The checkpoint file to resume from (its run was checked before any process started)."""
    return checkpoint.read(job.resume, map_location=device)


def restore(state: dict, layout, stage) -> dict:
    """Restore this rank's stage; returns the messages addressed to it, sent but not used yet."""
    if len(state["replicas"]) != layout.replicas:  # check_config compares the replicas before any process starts
        raise ValueError(f"the checkpoint holds {len(state['replicas'])} replicas; this run has --replicas "
                         f"{layout.replicas}")
    mine = state["replicas"][layout.replica]
    checkpoint.restore_stage(stage, checkpoint.copied(mine["stages"][layout.stage]))
    return checkpoint.copied({key: t for key, t in mine["messages"].items() if key[2] == layout.stage})
