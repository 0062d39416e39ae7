"""A CLI run's configuration turned into Python objects: the zoo's data and model, the optimizer and
scheduler factories, the partition, and the ``Pipeline`` that trains them (``run.train`` calls it)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .compensate import flop_boundaries
from .config import RunConfig
from .data import FolderData, load_dataset
from .data.batches import Batches
from .data.loader import training_data
from .methods import Method, get_method
from .models import build_model, lm_loss
from .optim import StageInfo, nag_async, pipemare
from .optim.pipemare import parse_correction
from .schedule import Schedule
from .stage import Stage
from .stagespec import StageSpec


@dataclass
class Run:
    config: RunConfig
    method: Method
    schedule: Schedule
    dataset: object
    batches: object  # Batches, or LoaderBatches over a streamed dataset's DataLoader
    modules: list[nn.Sequential]


def make_optimizer(cfg: RunConfig, params, stage: StageInfo | None = None) -> torch.optim.Optimizer:
    """The run's optimizer for one stage (``stage``: what StageSpec tells a stage-aware factory), with
    PipeMare's learning-rate correction where ``--lr-correction pipemare T`` asks (T epochs -> updates)."""
    params = list(params)
    name = cfg.optimizer.lower()
    if name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        opt = cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif name == "nag-async":
        opt = nag_async(params, lr=cfg.lr, stage=stage, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    else:
        raise ValueError(f"unknown --optimizer {cfg.optimizer!r} (valid: sgd, adam, adamw, nag-async; the Python API "
                         f"takes any torch.optim optimizer)")
    epochs = parse_correction(cfg.lr_correction)
    if epochs is not None:
        if stage is None:
            raise TypeError("--lr-correction pipemare needs the stage's delay: call make_optimizer(cfg, params, "
                            "stage=StageInfo(...)) (StageSpec does)")
        pipemare(opt, epochs * stage.updates_per_epoch, stage=stage)
    return opt


def make_scheduler(cfg: RunConfig, optimizer, updates: int = 1):
    """cosine, step: per epoch (a stage steps its scheduler after applying an epoch's last gradient);
    warmup_cosine: per update, ``updates`` of them in the run (linear warm-up, then cosine to 0)."""
    if cfg.lr_schedule == "warmup_cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_cosine, updates, cfg.lr_warmup))
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)
    return None


def warmup_cosine(updates: int, warmup: float, step: int) -> float:
    """The LR factor after ``step`` updates: linear from 1/w to 1 over the first w = warmup x updates
    (at least 1), then a cosine from 1 to 0 at ``updates``."""
    w = max(1, round(warmup * updates))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - w) / max(1, updates - w))))


def parse_partition(spec: str) -> dict:
    if spec in ("params", "time", "uniform", "flops"):
        return {"balance": spec}
    try:
        return {"boundaries": [int(v) for v in spec.split(",")]}
    except ValueError:
        raise ValueError(f"bad --partition {spec!r} (valid: params, time, uniform, flops, or boundaries like "
                         f"'3,6')") from None


def build_pipeline(cfg: RunConfig) -> tuple:
    """A CLI run as Python objects: (Pipeline, dataset, training data). The training data is the zoo's
    ``Batches``, or for a dataset streamed from disk ("folder") a DataLoader whose workers decode the
    files; ``dataset.validation(dtype)`` is the matching ``val_data``. The zoo's model is built under
    ``torch.manual_seed(cfg.seed)``; every process that builds it gets the same weights."""
    from .pipeline import Pipeline

    cfg = cfg.resolved()
    dtype = getattr(torch, cfg.dtype)
    method = get_method(cfg.method, **cfg.method_opts)
    text = cfg.dataset == "text"
    data = load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.seed, download=cfg.download,
                        **({"context": cfg.context} if text else {}))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, data.in_shape, **cfg.model_opts).to(dtype)
    streamed = isinstance(data, FolderData)
    if streamed:  # fit's first pass over it is epoch 0: nothing here iterates it
        batches = data.train_loader(cfg.batch_size, cfg.seed, dtype)
    else:  # text: tokens stay integers
        x = data.train_x if not data.train_x.is_floating_point() else data.train_x.to(dtype)
        batches = Batches(x, data.train_y, cfg.batch_size, cfg.seed, augment=data.augment)

    def first_inputs(n: int) -> torch.Tensor:
        return data.sample(n, dtype) if streamed else batches.get(0)[0][:n]

    part = parse_partition(cfg.partition or method.partition)  # None: the method's default
    recompute = method.activations == "recompute"
    if part.get("balance") == "time":
        part["sample"] = first_inputs(cfg.batch_size)
    if part.get("balance") == "flops":  # DTRP's batch compensation (compensate.py): FLOPs, deterministic
        part = {"boundaries": flop_boundaries(model, cfg.stages, first_inputs(2), recompute=recompute)}
    opts = dict(cfg.method_opts)
    head = opts.pop("head", None)
    local = method.family == "local"
    per_step = cfg.lr_schedule == "warmup_cosine"
    per_epoch = batches.per_epoch if isinstance(batches, Batches) else len(batches)
    updates = math.ceil(cfg.epochs * per_epoch / method.accumulate)  # of each stage, in the whole run
    lm = {"criterion": lm_loss, "token_unit": "byte"} if text else {}
    pipe = Pipeline(model, cfg.method, cfg.stages, optimizer=partial(make_optimizer, cfg),
                    scheduler=partial(make_scheduler, cfg, updates=updates),
                    scheduler_interval="step" if per_step else "epoch", precision=cfg.precision, **lm,
                    seed=cfg.seed, head=head,
                    num_classes=data.num_classes if local else None, engine=cfg.engine, replicas=cfg.replicas,
                    device=cfg.device, backend=cfg.backend, timeout=cfg.timeout, init_method=cfg.init_method,
                    threads=cfg.threads or 1, trace=cfg.trace, **part, **opts)
    return pipe, data, batches


def build_run(cfg: RunConfig) -> Run:
    """The simulator's parts of a CLI run, for tests and benchmarks that drive stages themselves."""
    cfg = cfg.resolved()
    pipe, data, batches = build_pipeline(cfg)
    batches = training_data(batches)  # a DataLoader gets random access by batch index
    m = pipe.method
    schedule = Schedule(m.family, cfg.stages, cfg.epochs * batches.per_epoch, m.order, m.accumulate,
                        m.param_messages)
    return Run(cfg, m, schedule, data, batches, pipe.modules)


def build_stage(run: Run, k: int, device: torch.device | str = "cpu") -> Stage:
    cfg, method = run.config, run.method
    module = run.modules[k].to(device)
    head = None
    if method.family == "local" and k < cfg.stages - 1:  # sized by batch 0, as the Pipeline does
        from .heads import stage_head
        head = stage_head(method.head, run.modules, k, run.batches.get(0)[0], run.dataset.num_classes,
                          seed=cfg.seed)
    spec = StageSpec(k, module, method, partial(make_optimizer, cfg), partial(make_scheduler, cfg), seed=cfg.seed,
                     head=head)
    return spec.build(run.schedule, run.batches.per_epoch)
