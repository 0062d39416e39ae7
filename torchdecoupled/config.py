"""A training run's configuration, checked at the boundary with errors that name the value and the fix."""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

import torch

from .methods import get_method
from .models import MODELS
from .models.revnet import DATASET_REVNETS
from .optim.pipemare import parse_correction
from .precision import PRECISIONS

# Sensible defaults per dataset: (model, epochs, batch size, lr)
DATASET_DEFAULTS = {
    "mnist1d": ("cnn1d_bn", 40, 50, 0.05),
    "digits": ("cnn2d", 20, 64, 0.05),
    "synthetic": ("resnet20", 1, 128, 0.1),
    "cifar10": ("resnet56", 300, 128, 0.1),
    "cifar100": ("resnet56", 300, 128, 0.1),
    "mnist": ("cnn2d", 10, 128, 0.05),
    "fashion_mnist": ("cnn2d", 20, 128, 0.05),
    "folder": ("resnet20", 30, 128, 0.1),   # a user's image folder, resized to 3x32x32
    "text": ("gpt_mini", 2, 32, 3e-3),      # byte-level language modelling (data/text.py)
}
# Where a dataset's recipe differs from (sgd, cosine per epoch): the optimizer and the LR schedule
RECIPES = {"text": ("adamw", "warmup_cosine")}
DEFAULT_RECIPE = ("sgd", "cosine")
LR_SCHEDULES = ("none", "cosine", "step", "warmup_cosine")
DTYPES = ("float32", "float64")
OPTIMIZERS = ("sgd", "adam", "adamw", "nag-async")
DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


MAX_TIMEOUT = 2_000_000.0  # seconds (23 days): torch.distributed holds a timeout in int32 milliseconds
MAX_SEED = 2**48 - 1  # derived seeds (a head's seed * 1000 + k) must stay within torch's int64 seeds
MAX_THREADS = 1024    # far more threads than cores; 100000 makes OpenBLAS fail to start its threads and crash


@dataclass
class RunConfig:
    method: str = "fdg"
    method_opts: dict = field(default_factory=dict)   # beta, accumulate, order, warmup_epochs, ...
    stages: int = 3
    dataset: str = "mnist1d"
    data_root: str | None = None
    download: bool = False             # fetch a missing MNIST/Fashion-MNIST/CIFAR into data_root, SHA-256 checked
    model: str | None = None          # None: the dataset's default
    model_opts: dict = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None       # None: the dataset's recipe (sgd; text: adamw)
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str | None = None     # None: the dataset's recipe (cosine; text: warmup_cosine, per update)
    lr_warmup: float = 0.05            # warmup_cosine: the fraction of the updates that warm up linearly
    milestones: tuple[int, ...] = ()   # epochs for lr_schedule="step" (x0.1 each)
    lr_correction: str = "none"        # "none", or "pipemare T": lr / tau^(1 - min(t / T, 1)), T in epochs
    partition: str | None = None       # params | time | uniform | flops, or boundaries "2,5"; None: the
                                       # method's default (params; dtrp: flops, its batch compensation)
    seed: int = 0
    dtype: str = "float32"
    precision: str = "float32"         # float32, or bf16: autocast per stage, bf16 boundaries (precision.py)
    context: int = 64                  # text: tokens per window (the model's context length)
    device: str = "cpu"
    engine: str = "sim"
    replicas: int = 1                  # dist engine: data-parallel replicas per stage (K x D processes)
    backend: str | None = None         # dist engine: gloo or nccl (default: nccl on cuda, else gloo)
    timeout: float = 60.0              # dist engine: seconds a stage waits on a peer before failing
    init_method: str | None = None     # dist engine: e.g. tcp://host:port or file:///path (default: free port)
    trace: bool = True                 # dist engine: record the timeline (Chrome trace + Gantt PNG)
    out: str | None = None
    tensorboard: bool = False          # write TensorBoard event files into out
    progress: bool = True
    checkpoint: bool = False           # save out/checkpoint.pt after every epoch
    resume: str | None = None          # run directory whose checkpoint.pt to continue from (either engine)
    force: bool = False                # write into an out that holds a run, deleting its results (outdir.py)
    threads: int | None = None

    def resolved(self) -> "RunConfig":
        """Fill dataset defaults and validate everything; returns a new config."""
        if self.dataset not in DATASET_DEFAULTS:
            raise ValueError(f"unknown dataset {self.dataset!r} (valid: {', '.join(sorted(DATASET_DEFAULTS))})")
        model, epochs, bs, lr = DATASET_DEFAULTS[self.dataset]
        c = RunConfig(**{**asdict(self)})
        c.model = c.model or (DATASET_REVNETS.get(self.dataset) if c.method == "petra" else None) or model
        c.epochs = epochs if c.epochs is None else c.epochs
        c.batch_size = bs if c.batch_size is None else c.batch_size
        c.lr = lr if c.lr is None else c.lr
        opt, schedule = RECIPES.get(self.dataset, DEFAULT_RECIPE)
        c.optimizer = opt if c.optimizer is None else c.optimizer
        c.lr_schedule = schedule if c.lr_schedule is None else c.lr_schedule
        method = get_method(c.method, **c.method_opts)  # raises on a bad name or option
        c.partition = c.partition or method.partition
        if c.stages < 1:
            raise ValueError(f"--stages must be >= 1, got {c.stages}")
        if c.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {c.epochs}")
        if c.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {c.batch_size}")
        if not 0 < c.lr < math.inf:
            raise ValueError(f"--lr must be a finite number > 0, got {c.lr}")
        if c.model not in MODELS:
            raise ValueError(f"unknown --model {c.model!r} (valid: {', '.join(sorted(MODELS))})")
        if c.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown --optimizer {c.optimizer!r} (valid: {', '.join(OPTIMIZERS)}; the Python API "
                             f"takes any torch.optim optimizer)")
        if not 0 <= c.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {c.momentum}")
        if not 0 <= c.weight_decay < math.inf:
            raise ValueError(f"--weight-decay must be a finite number >= 0, got {c.weight_decay}")
        parse_correction(c.lr_correction)  # raises on a bad form or T
        c.lr_correction = " ".join(str(c.lr_correction).split())
        if c.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown --lr-schedule {c.lr_schedule!r} (valid: {', '.join(LR_SCHEDULES)})")
        if c.dtype not in DTYPES:
            raise ValueError(f"unknown --dtype {c.dtype!r} (valid: {', '.join(DTYPES)})")
        if c.precision not in PRECISIONS:
            raise ValueError(f"unknown --precision {c.precision!r} (valid: {', '.join(PRECISIONS)})")
        if c.precision != "float32" and method.activations == "reverse":
            raise ValueError(f"--method {c.method} rebuilds stage inputs by subtraction, which --precision "
                             f"{c.precision} rounds more at every stage: use --precision float32")
        if c.precision == "bf16" and c.dtype != "float32":
            raise ValueError(f"--precision bf16 keeps float32 master weights: it needs --dtype float32 (got "
                             f"--dtype {c.dtype})")
        if isinstance(c.context, bool) or not isinstance(c.context, int) or not 1 <= c.context <= 1_000_000:
            raise ValueError(f"--context must be an integer in [1, 1000000] (tokens per window), got {c.context!r}")
        if not 0 <= c.lr_warmup < 1:
            raise ValueError(f"--lr-warmup must be a fraction of the updates in [0, 1), got {c.lr_warmup}")
        check_device(c.device)
        if c.threads is not None and not 1 <= c.threads <= MAX_THREADS:
            raise ValueError(f"--threads must be in [1, {MAX_THREADS}] (torch threads per process), got {c.threads}")
        if not 0 <= c.seed <= MAX_SEED:
            raise ValueError(f"--seed must be an integer in [0, 2**48 - 1], got {c.seed}")
        if any(m < 1 for m in c.milestones):
            raise ValueError(f"--milestones are epochs >= 1 (the learning rate drops after that many epochs), "
                             f"got {','.join(map(str, c.milestones))}")
        if c.engine not in ("sim", "dist"):
            raise ValueError(f"unknown --engine {c.engine!r} (valid: sim, dist)")
        if c.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {c.replicas}")
        if c.replicas > 1 and c.engine != "dist":
            raise ValueError(f"--replicas {c.replicas} needs --engine dist (the simulator runs one replica)")
        if not 0 < c.timeout <= MAX_TIMEOUT:
            raise ValueError(f"--timeout must be greater than 0 and at most {MAX_TIMEOUT:g} seconds, got {c.timeout}")
        if c.checkpoint and not c.out:
            raise ValueError("--checkpoint needs --out DIR (the checkpoint is DIR/checkpoint.pt)")
        if c.tensorboard and not c.out:
            raise ValueError("--tensorboard needs --out DIR (the event files go into DIR)")
        c.milestones = tuple(int(m) for m in c.milestones)
        return c

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def check_device(device: str) -> None:
    """A device this machine has, or a one-line ValueError naming it and the valid forms."""
    if not DEVICE.fullmatch(device):
        raise ValueError(f"bad --device {device!r} (valid: cpu, cuda, cuda:N)")
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch.cuda.is_available() is False here (torch {torch.__version__}): "
                         f"use --device cpu, or a CUDA build of torch on a machine with a GPU (README: GPU users)")
    n = torch.cuda.device_count()
    if ":" in device and int(device.split(":")[1]) >= n:
        raise ValueError(f"--device {device}: this machine has {n} CUDA device(s) (valid: cuda, cuda:0 to "
                         f"cuda:{n - 1})")
