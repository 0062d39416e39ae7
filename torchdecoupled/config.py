"""A training run's configuration, checked at the boundary with errors that name the value and the fix."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .methods import get_method

# Sensible defaults per dataset: (model, epochs, batch size, lr)
DATASET_DEFAULTS = {
    "mnist1d": ("cnn1d_bn", 40, 50, 0.05),
    "digits": ("cnn2d", 20, 64, 0.05),
    "synthetic": ("resnet20", 1, 128, 0.1),
    "cifar10": ("resnet56", 300, 128, 0.1),
    "cifar100": ("resnet56", 300, 128, 0.1),
    "mnist": ("cnn2d", 10, 128, 0.05),
}
LR_SCHEDULES = ("none", "cosine", "step")
DTYPES = ("float32", "float64")


@dataclass
class RunConfig:
    method: str = "fdg"
    method_opts: dict = field(default_factory=dict)   # beta, accumulate, order, warmup_epochs, ...
    stages: int = 3
    dataset: str = "mnist1d"
    data_root: str | None = None
    model: str | None = None          # None: the dataset's default
    model_opts: dict = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    milestones: tuple[int, ...] = ()   # epochs for lr_schedule="step" (x0.1 each)
    partition: str | None = None       # params | time | uniform | flops, or boundaries "2,5"; None: the
                                       # method's default (params; dtrp: flops, its batch compensation)
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    engine: str = "sim"
    replicas: int = 1                  # dist engine: data-parallel replicas per stage (K x D processes)
    backend: str | None = None         # dist engine: gloo or nccl (default: nccl on cuda, else gloo)
    timeout: float = 60.0              # dist engine: seconds a stage waits on a peer before failing
    init_method: str | None = None     # dist engine: e.g. tcp://host:port or file:///path (default: free port)
    trace: bool = True                 # dist engine: record the timeline (Chrome trace + Gantt PNG)
    out: str | None = None
    progress: bool = True
    checkpoint: bool = False           # save out/checkpoint.pt after every epoch but the last
    resume: str | None = None          # run directory whose checkpoint.pt to continue from (either engine)
    threads: int | None = None

    def resolved(self) -> "RunConfig":
        """Fill dataset defaults and validate everything; returns a new config."""
        if self.dataset not in DATASET_DEFAULTS:
            raise ValueError(f"unknown dataset {self.dataset!r} (valid: {', '.join(sorted(DATASET_DEFAULTS))})")
        model, epochs, bs, lr = DATASET_DEFAULTS[self.dataset]
        c = RunConfig(**{**asdict(self)})
        c.model = c.model or model
        c.epochs = epochs if c.epochs is None else c.epochs
        c.batch_size = bs if c.batch_size is None else c.batch_size
        c.lr = lr if c.lr is None else c.lr
        method = get_method(c.method, **c.method_opts)  # raises on a bad name or option
        c.partition = c.partition or method.partition
        if c.stages < 1:
            raise ValueError(f"--stages must be >= 1, got {c.stages}")
        if c.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {c.epochs}")
        if c.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {c.batch_size}")
        if c.lr <= 0:
            raise ValueError(f"--lr must be > 0, got {c.lr}")
        if c.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown --lr-schedule {c.lr_schedule!r} (valid: {', '.join(LR_SCHEDULES)})")
        if c.dtype not in DTYPES:
            raise ValueError(f"unknown --dtype {c.dtype!r} (valid: {', '.join(DTYPES)})")
        if c.engine not in ("sim", "dist"):
            raise ValueError(f"unknown --engine {c.engine!r} (valid: sim, dist)")
        if c.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {c.replicas}")
        if c.replicas > 1 and c.engine != "dist":
            raise ValueError(f"--replicas {c.replicas} needs --engine dist (the simulator runs one replica)")
        if c.timeout <= 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {c.timeout}")
        if c.checkpoint and not c.out:
            raise ValueError("--checkpoint needs --out DIR (the checkpoint is DIR/checkpoint.pt)")
        c.milestones = tuple(int(m) for m in c.milestones)
        return c

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)
