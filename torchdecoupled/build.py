"""Build a run from its configuration: data, model, partition, and one Stage per stage.

Every process of a distributed run calls the same functions with the same seed, so every stage starts
from the same weights as in the simulator.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .compensate import flop_boundaries
from .config import RunConfig
from .data import load_dataset
from .data.batches import Batches
from .methods import Method, get_method
from .models import build_model
from .partition import split
from .schedule import Schedule
from .stage import Stage


@dataclass
class Run:
    config: RunConfig
    method: Method
    schedule: Schedule
    dataset: object
    batches: Batches
    modules: list[nn.Sequential]


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    name = cfg.optimizer.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown --optimizer {cfg.optimizer!r} (valid: sgd, adam, adamw; the Python API "
                     f"takes any torch.optim optimizer)")


def make_scheduler(cfg: RunConfig, optimizer):
    """Epoch-based LR schedules; a stage steps its scheduler after applying an epoch's last gradient."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=0.1)
    return None


def parse_partition(spec: str) -> dict:
    if spec in ("params", "time", "uniform", "flops"):
        return {"balance": spec}
    try:
        return {"boundaries": [int(v) for v in spec.split(",")]}
    except ValueError:
        raise ValueError(f"bad --partition {spec!r} (valid: params, time, uniform, flops, or boundaries like "
                         f"'3,6')") from None


def build_run(cfg: RunConfig) -> Run:
    cfg = cfg.resolved()
    dtype = getattr(torch, cfg.dtype)
    method = get_method(cfg.method, **cfg.method_opts)
    data = load_dataset(cfg.dataset, root=cfg.data_root)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes, data.in_shape, **cfg.model_opts).to(dtype)
    batches = Batches(data.train_x.to(dtype), data.train_y, cfg.batch_size, cfg.seed, augment=data.augment)
    sample = None
    part = parse_partition(cfg.partition or method.partition)  # None: the method's default
    recompute = method.activations == "recompute"
    if part.get("balance") == "time":
        sample = batches.get(0)[0]
    if part.get("balance") == "flops":  # DTRP's batch compensation (compensate.py): FLOPs, deterministic
        part = {"boundaries": flop_boundaries(model, cfg.stages, batches.get(0)[0][:2], recompute=recompute)}
    modules = split(model, cfg.stages, sample=sample, recompute=recompute, **part)
    schedule = Schedule(method.family, cfg.stages, cfg.epochs * batches.per_epoch, method.order, method.accumulate)
    return Run(cfg, method, schedule, data, batches, modules)


def build_stage(run: Run, k: int, device: torch.device | str = "cpu") -> Stage:
    cfg, method = run.config, run.method
    module = run.modules[k].to(device)
    head = None
    if method.family == "local" and k < cfg.stages - 1:  # sized by batch 0; shared with the Python API
        from .heads import stage_head
        head = stage_head(method.head, run.modules, k, run.batches.get(0)[0], run.dataset.num_classes,
                          seed=cfg.seed)
    params = list(module.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = make_optimizer(cfg, params)
    predictor = None
    if method.predictor != "none":
        from .predict import make_predictor
        predictor = make_predictor(method.predictor)
    return Stage(k, run.schedule, method, module, opt, scheduler=make_scheduler(cfg, opt), head=head,
                 predictor=predictor, seed=cfg.seed, batches_per_epoch=run.batches.per_epoch)
