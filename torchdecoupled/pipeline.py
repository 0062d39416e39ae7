"""The one training path: your model cut into stages, trained by a decoupled method, on either engine.

    import torch, torchdecoupled as td
    model = MyNet()                                     # an nn.Sequential of blocks (yours)
    pipe = td.Pipeline(model, "fdg", stages=2, engine="dist",          # or engine="sim"
                       optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
                       scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 1e-3, total_steps=500),
                       scheduler_interval="step", criterion=torch.nn.MSELoss())
    history = pipe.fit(train_loader, epochs=5, val_data=val_loader)   # one dict per epoch
    model(x)                                            # your model holds the trained weights

``engine="sim"`` runs every stage in this process (deterministic; the reference). ``engine="dist"``
runs one process per stage x replica on torch.distributed: from a plain script it starts them itself;
under ``torchrun`` (or in a process group you made) this process is one rank and runs its part. Both
engines give the same weights bit for bit (CPU, one replica) and leave them in your model.

The CLI (``torchdecoupled train``) and the speed benchmark build a Pipeline and call ``fit`` too.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch
from torch import nn

from . import checkpoint as ckpt
from . import pipeline_checks as checks
from . import resume as resuming
from .data.loader import training_data
from .engines.sim import evaluate, run_sim
from .evaluation import eval_chunks
from .heads import FACTORY_FIX, HeadFactory, build_head, check_factory, needs_modules, stage_head
from .methods import get_method
from .logs import require_tensorboard
from .metrics import MetricsWriter, epoch_record, lm_keys, machine, params_sha256, progress_bar, write_summary
from .precision import check_precision
from .reversible import warn_if_none_reversible
from .partition import cut_points, split
from .schedule import Schedule, eval_ticks
from .stage import Stage
from .stagespec import StageSpec
from .transport import LocalTransport



class Pipeline:
    """``model`` (an nn.Sequential, or a list of blocks) cut into ``stages`` stages, trained by ``method``.

    optimizer, scheduler: factories, called once per stage (``optimizer(params)``, ``scheduler(opt)``);
    scheduler_interval: "epoch" (step once per epoch) or "step" (after every update of the stage: a
    stage steps its scheduler with its own updates, each a few batches late under a delayed method).
    criterion: ``(outputs, targets) -> scalar`` (default cross-entropy); metrics: extra ``{name: fn}``
    evaluated like the criterion. boundaries / balance / sample: the partition (``partition.split``).
    seed: dropout masks and head initialization. head, num_classes: local learning's auxiliary heads
    (a name in ``heads.HEADS`` or a factory ``(k, feature_shape, num_classes, input_shape) -> AuxHead``).
    engine: "sim" or "dist"; replicas, device ("cpu", "cuda": stage process r on its own GPU), backend,
    timeout (seconds a process waits on a peer), init_method, threads (per process), trace: the
    distributed engine's. batch_keys: the input and target entries of dict batches.
    method_opts: the method's options (beta=, accumulate=, order=, predictor=, ...).
    """

    def __init__(self, model: nn.Module, method: str = "fdg", stages: int = 2, *,
                 optimizer: Callable[[list], torch.optim.Optimizer],
                 scheduler: Callable[[torch.optim.Optimizer], object] | None = None, scheduler_interval: str = "epoch",
                 criterion: Callable | None = None, metrics: dict | None = None,
                 boundaries: list[int] | None = None, balance: str = "params", sample=None, seed: int = 0,
                 head: str | HeadFactory | None = None, num_classes: int | None = None,
                 engine: str = "sim", replicas: int = 1, device: str | None = None, backend: str | None = None,
                 timeout: float = 60.0, init_method: str | None = None, threads: int = 1, trace: bool = True,
                 batch_keys: tuple[str, str] = ("x", "y"), precision: str = "float32", token_unit: str | None = None,
                 **method_opts):
        checks.check_engine(engine, replicas, timeout, threads)
        checks.check_values(method, seed, device, method_opts)
        checks.check_parts(scheduler, criterion, boundaries, batch_keys)
        first = next((p for p in model.parameters()), None) if isinstance(model, nn.Module) else None
        self.precision = check_precision(precision, first.dtype if first is not None else None)
        self.token_unit = checks.check_unit(token_unit)
        if not callable(optimizer):
            raise TypeError(f"optimizer must be a factory, e.g. optimizer=lambda params: torch.optim.SGD(params, "
                            f"lr=0.1) (got {type(optimizer).__name__})")
        factory = None if head is None or isinstance(head, str) else check_factory(head)
        self.method = get_method(method, head=None if factory else head, **method_opts)
        checks.check_local(self.method, method, factory, num_classes)
        self.head, self.num_classes = factory or self.method.head, num_classes
        self.model = model
        self.modules = split(model, stages, boundaries=boundaries, balance=balance, sample=sample,
                             recompute=self.method.activations == "recompute")
        checks.check_shared(self.modules)
        warn_if_none_reversible(self.method, self.modules)  # PETRA on a model without reversible stages
        if engine == "dist" and boundaries is None and balance == "time" and stages > 1:
            from .engines.dist import agree_on_cuts
            cuts = agree_on_cuts(cut_points(self.modules), backend, device or "cpu", init_method, timeout)
            if cuts != cut_points(self.modules):
                self.modules = split(model, stages, boundaries=cuts)
        if device is not None and engine == "sim":
            for m in self.modules:
                m.to(device)
        self.make_opt, self.make_sched, self.interval = optimizer, scheduler, scheduler_interval
        self.criterion, self.metrics, self.seed, self.batch_keys = criterion, metrics, seed, tuple(batch_keys)
        self.engine, self.replicas, self.device, self.backend = engine, replicas, device, backend
        self.timeout, self.init_method, self.threads, self.trace = timeout, init_method, threads, trace
        self.stages: list[Stage] = []
        self.heads: list[nn.Module] = []
        self.last_run: dict = {}
        if self.method.family != "local" or len(self.modules) == 1 or sample is not None:
            self._ready(sample)

    @property
    def boundaries(self) -> list[int]:
        return cut_points(self.modules)

    # ---- building the stages ------------------------------------------------------------------------
    def _spec(self, k: int) -> StageSpec:
        return StageSpec(k, self.modules[k], self.method, self.make_opt, self.make_sched, self.interval,
                         self.criterion, self.seed, self.heads[k] if k < len(self.heads) else None,
                         precision=self.precision)

    def _ready(self, x) -> None:
        """Build the stages once: local learning first sizes its heads by a forward of x."""
        if self.stages:
            return
        if self.method.family == "local" and len(self.modules) > 1 and not self.heads:
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"method {self.method.name!r} sizes its auxiliary heads by a forward of an input "
                                 f"batch: pass sample=<a tensor of inputs> (got {type(x).__name__})")
            for k in range(len(self.modules) - 1):
                h = stage_head(self.head, self.modules, k, x, self.num_classes, seed=self.seed)
                if any(h is old for old in self.heads):
                    raise ValueError(f"the head factory returned the same head for stages {self.heads.index(h)} "
                                     f"and {k}: {FACTORY_FIX}")
                self.heads.append(h)
        self._build(1, 1)

    def _build(self, num_batches: int, per_epoch: int) -> Schedule:
        m = self.method
        schedule = Schedule(m.family, len(self.modules), num_batches, m.order, m.accumulate, m.param_messages)
        old = self.stages
        self.stages = [self._spec(k).build(schedule, per_epoch, old[k] if old else None)
                       for k in range(len(self.modules))]
        return schedule

    # ---- training -------------------------------------------------------------------------------------
    def fit(self, data, epochs: int = 1, *, val_data=None, batch_size: int | None = None, progress: bool = True,
            out: str | None = None, on_epoch: Callable[[dict], None] | None = None, checkpoint: bool = False,
            resume: str | None = None, info: dict | None = None, tensorboard: bool = False) -> list[dict]:
        """Train for ``epochs`` passes over ``data`` (an iterable of batches with a length, e.g. a DataLoader;
        or a Dataset with ``batch_size``); evaluate ``val_data`` ((x, y) tensors or an iterable of batches,
        read once per fit) after every epoch. Returns the history: one dict per epoch (metrics.jsonl's
        records). ``out``: the run directory (metrics.jsonl, summary.json, model.pt: the final weights; the
        timeline on dist), written where told, over an earlier run's files too (``train(cfg)`` and the CLI
        refuse such a directory: ``outdir.py``); checkpoint: write ``out/checkpoint.pt`` after every epoch;
        resume: a checkpoint file to continue, ``epochs`` counting the epochs before it (a finished run's:
        more extend it, see ``resume.py``); info: what describes the run, stored in the checkpoint and the
        summary. A second fit continues the same stages (optimizer, scheduler and predictor state kept)."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1 (got {checks.shown(epochs)})")
        if info is not None and not isinstance(info, dict):
            raise TypeError(f"info must be a dict describing the run, or None (got {type(info).__name__})")
        if on_epoch is not None and not callable(on_epoch):
            raise TypeError(f"on_epoch must be a callable(record) or None (got {type(on_epoch).__name__})")
        for name, path in (("out", out), ("resume", resume)):
            if path is not None and (not isinstance(path, (str, os.PathLike)) or "\0" in os.fspath(path)):
                raise TypeError(f"{name} must be a path (without NUL characters) or None (got {checks.shown(path)})")
        for name, flag in (("progress", progress), ("checkpoint", checkpoint), ("tensorboard", tensorboard)):
            if not isinstance(flag, (bool, int)):
                raise TypeError(f"{name} must be True or False (got {checks.shown(flag)})")
        if checkpoint and not out:
            raise ValueError("checkpoint=True needs out= (the checkpoint is out/checkpoint.pt)")
        if tensorboard and not out:
            raise ValueError("tensorboard=True needs out= (the event files go into out/tensorboard/)")
        if tensorboard:
            require_tensorboard()
        batches = training_data(data, batch_size, self.seed, self.batch_keys)
        val = list(eval_chunks(val_data, keys=self.batch_keys)) if val_data is not None else None
        state = ckpt.read(resume) if resume else None
        run = dict(epochs=epochs, progress=progress, out=out, on_epoch=on_epoch, checkpoint=checkpoint,
                   tensorboard=tensorboard, begin=resuming.start(state, epochs, self.method), info=dict(info or {}))
        start = time.perf_counter()
        if self.engine == "dist":
            records = self._fit_dist(batches, val, resume=resume, **run)
        else:
            records = self._fit_sim(batches, val, state=state, **run)
        self.last_run.update(epochs=epochs, per_epoch=batches.per_epoch, time_s=time.perf_counter() - start)
        if out and self.last_run.get("writes_summary", True):  # under torchrun: rank 0, holding every stage
            ckpt.save_model(out, self.model)
            write_summary(out, self.summary(records, run["info"]))
        return records

    def _fit_sim(self, batches, val, *, epochs, progress, out, on_epoch, checkpoint, state, begin, info,
                 tensorboard) -> list[dict]:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise ValueError("engine='sim' runs every stage in one process, but this process is one of a launched "
                             "run (WORLD_SIZE > 1): use engine='dist' under torchrun")
        self._ready(batches.get(0)[0] if not self.stages else None)
        per_epoch, first_epoch = batches.per_epoch, begin.first_epoch
        schedule = self._build((epochs - first_epoch) * per_epoch, per_epoch)
        evals = eval_ticks(schedule, per_epoch, epochs - first_epoch)
        transport, records = LocalTransport(), []
        if state is not None:
            records = ckpt.restore(state, self.stages, transport)[1]
        batches = resuming.later_epochs(batches, first_epoch)
        writer = MetricsWriter(out, records, tensorboard=tensorboard)
        bar = progress_bar(schedule.num_ticks - begin.first_tick, progress,
                           f"{self.method.name} K={len(self.stages)}", epochs=epochs)
        clock = time.perf_counter() - (records[-1]["time_s"] if records else 0.0)
        release = getattr(batches, "release_before", None)

        def tick(t: int) -> None:
            if release is not None:  # the last stage, the latest reader, is done with these batches
                release(t - schedule.loss_tick(0) + 1)
            if bar is not None:
                bar.update(1)
            if t not in evals:
                return
            per_stage = [s.collect(evals[t]) for s in self.stages]
            ev = evaluate(self.stages, val, criterion=self.criterion, metrics=self.metrics) if val else {}
            rec = epoch_record(first_epoch + evals[t], per_stage, ev, time.perf_counter() - clock,
                               unit=self.token_unit)
            records.append(rec)
            writer.epoch(rec)
            if on_epoch is not None:
                on_epoch(rec)
            if checkpoint:
                ckpt.save(ckpt.in_dir(out), self.stages, transport, t, records, info, self.boundaries, per_epoch,
                          (epochs, first_epoch, t == schedule.num_ticks - 1))
            if bar is not None:
                bar.epoch(rec)

        try:
            run_sim(self.stages, schedule, batches, on_tick=tick, transport=transport,
                    ticks=range(begin.first_tick, schedule.num_ticks))
        finally:
            if hasattr(batches, "close"):
                batches.close()
        if bar is not None:
            bar.close()
        writer.close()
        self.last_run = {"engine": "sim", "schedule": schedule, "peaks": [s.telemetry.peak_bytes for s in self.stages]}
        return records

    def dist_parts(self, per_epoch: int, epochs: int, progress: bool = False, out: str | None = None,
                   checkpoint: bool = False, resume: str | None = None, info: dict | None = None) -> tuple:
        """(DistJob, one StageSpec per stage): what the distributed engine runs for ``fit``."""
        from .engines.dist_job import DistJob

        m = self.method
        job = DistJob(m, len(self.modules), epochs, per_epoch, self.replicas, self.seed, self.device or "cpu",
                      self.backend, self.timeout, self.init_method, self.threads, self.trace, progress, out,
                      checkpoint, resume, dict(info or {}), self.boundaries,
                      self.head if m.family == "local" else None, self.num_classes, self.metrics)
        specs = [self._spec(k) for k in range(len(self.modules))]
        for k, s in enumerate(self.stages):
            specs[k].state = ckpt.stage_state(s)
        return job, specs

    def _fit_dist(self, batches, val, *, epochs, progress, out, on_epoch, checkpoint, resume, begin,
                  info, tensorboard) -> list[dict]:
        from .engines import dist as engine

        m = self.method
        if needs_modules(self.head):  # heads built from other stages' layers (auglocal): here, where all stages are
            self._ready(batches.get(0)[0])
        job, specs = self.dist_parts(batches.per_epoch, epochs, progress, out, checkpoint, resume, info)
        job.tensorboard, job.token_unit = tensorboard, self.token_unit
        result = engine.run(job, specs, resuming.later_epochs(batches, begin.first_epoch), val, on_epoch)
        self._adopt(result)
        if on_epoch is not None and engine.joined() is not None and engine.joined()[0] != 0:
            for rec in result["records"]:  # under torchrun rank 0 saw them live, the others now
                on_epoch(rec)
        schedule = Schedule(m.family, len(self.modules), (epochs - begin.first_epoch) * batches.per_epoch, m.order,
                            m.accumulate, m.param_messages)
        self.last_run = {"engine": "dist", "schedule": schedule, "peaks": result.get("peaks"),
                         "writes_summary": "states" in result,
                         "extra": {k: result[k] for k in ("idle_fraction", "backend", "world_size") if k in result}}
        return result["records"]

    def _adopt(self, result: dict) -> None:
        """Load the stage states a distributed run handed back into this process's stages (and so into
        the user's model): all of them on rank 0 and in a launcher, a rank's own under torchrun."""
        if self.method.family == "local" and len(self.modules) > 1 and not self.heads:
            K = len(self.modules)
            for k in range(K - 1):
                shape, dtype = result["boundaries"][k].leaves[0]
                dtype = torch.float32 if self.precision == "bf16" else dtype
                device = next(self.modules[k].parameters()).device
                self.heads.append(build_head(self.head, k, K, shape, result["input_shape"], self.num_classes,
                                             self.seed, device, dtype))
        self._ready(None)
        states = result.get("states") or {result["stage"]: result["state"]}
        for k, st in (enumerate(states) if isinstance(states, list) else states.items()):
            ckpt.restore_stage(self.stages[k], st)

    # ---- using the trained model ----------------------------------------------------------------------
    def predict(self, x):
        self._ready(x)
        for s in self.stages:
            x = s.predict(x)
        return x

    def evaluate(self, data, y=None, *, batch_size: int = 1000) -> dict:
        """The criterion's mean loss (``test_loss``), accuracy where it applies (``test_acc``) and the
        metrics, over ``evaluate(x, y)`` or ``evaluate(loader)``."""
        data = (data, y) if y is not None else data
        chunks = list(eval_chunks(data, batch_size, keys=self.batch_keys))
        self._ready(chunks[0][0] if chunks else None)
        return evaluate(self.stages, chunks, criterion=self.criterion, metrics=self.metrics)

    def summary(self, records: list[dict], info: dict | None = None) -> dict:
        """What summary.json holds for the last fit: time_s is the run's own clock (training and evaluation,
        as in metrics.jsonl), fit_s the whole call (on dist: process start-up included)."""
        info, run, last = info or {}, self.last_run, records[-1] if records else {}
        if "schedule" not in run:
            raise ValueError("summary() describes the last fit: call fit() first")
        out = {"method": self.method.describe(), "paper": self.method.paper, "engine": self.engine,
               "stages": len(self.modules), "replicas": self.replicas, "epochs": run.get("epochs"),
               "seed": self.seed, **{k: info[k] for k in ("model", "dataset") if k in info},
               **{k: last[k] for k in ("test_acc", "test_loss", "train_loss", *lm_keys(self.token_unit)) if k in last},
               "precision": self.precision,
               "params_sha256": params_sha256(self.modules), "peak_stored_bytes": run.get("peaks"),
               "boundaries": self.boundaries, "delay": run["schedule"].delays, "ticks": run["schedule"].num_ticks,
               "time_s": last.get("time_s", round(run.get("time_s", 0.0), 3)),
               "fit_s": round(run.get("time_s", 0.0), 3), "end_of_run": "drained", "config": info,
               "machine": machine()}
        if run.get("engine") == "dist":
            out.update(run.get("extra", {}), rank_layout="rank = stage * replicas + replica")
        return out
