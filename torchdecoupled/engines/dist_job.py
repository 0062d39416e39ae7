"""What every process of a distributed run is told: the run's settings, the same for all ranks.

The per-stage part (layers, head, factories, state) is a ``StageSpec`` and reaches only its own
stage's processes; the data reaches only rank 0 (``dist_feed``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..methods import Method


@dataclass
class DistJob:
    method: Method
    stages: int
    epochs: int
    per_epoch: int                       # batches per epoch
    replicas: int = 1
    seed: int = 0
    device: str = "cpu"                  # "cpu", "cuda" (stage process r on cuda:r, or LOCAL_RANK), "cuda:i"
    backend: str = "gloo"
    timeout: float = 60.0
    init_method: str | None = None
    threads: int = 1
    trace: bool = True
    progress: bool = True
    out: str | None = None               # rank 0 writes metrics.jsonl (and timeline, checkpoint) there
    checkpoint: bool = False
    resume: str | None = None            # a checkpoint file to continue
    info: dict = field(default_factory=dict)        # the run's description, stored in checkpoints
    boundaries: list[int] = field(default_factory=list)  # cut points (checkpoints are checked against them)
    head: object = None                  # local learning: head name or factory (heads built in the process)
    num_classes: int | None = None
    metrics: dict[str, Callable] | None = None
    records: list[dict] = field(default_factory=list)    # epochs already run (a resumed run)
    eval_batch: int = 1000
    tensorboard: bool = False            # rank 0 writes out/tensorboard/
    rng_state: object = None             # the caller's torch RNG state (a launcher's ranks start from it)
    token_unit: str | None = None        # a language model's token ("byte"): bits per token in the records

    @property
    def world_size(self) -> int:
        return self.stages * self.replicas
