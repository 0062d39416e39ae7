"""The command line: ``torchdecoupled train | compare | schedule | plot | methods | bench``."""
from __future__ import annotations

import argparse
import json
import sys

from .config import DATASET_DEFAULTS, RunConfig
from .methods import METHODS, get_method
from .schedule import Schedule, format_grid, validate


def _method_opts(a) -> dict:
    opts = {"beta": a.beta, "accumulate": a.accumulate, "order": a.order, "warmup_epochs": a.warmup,
            "predictor": a.predictor, "head": a.head}
    return {k: v for k, v in opts.items() if v is not None}


def _add_method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method options (where the method takes them)")
    g.add_argument("--beta", "--gamma", type=float, help="gradient shrinking factor (FDG beta, DTRP gamma)")
    g.add_argument("--accumulate", "-M", type=int, help="ADL: backwards summed per update")
    g.add_argument("--order", choices=["bf", "fb"], help="decoupled family: B,U then F (bf) or F then B,U (fb)")
    g.add_argument("--warmup", type=float, help="ADL: linear LR warm-up epochs from 0.01*lr")
    g.add_argument("--predictor", help="DTRP: weight predictor (none, momentum, delta)")
    g.add_argument("--head", help="local learning: auxiliary head (linear, dgl, infopro)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", "-K", type=int, default=3, help="number of stages K (default 3)")
    p.add_argument("--dataset", default="mnist1d", help=f"one of {', '.join(sorted(DATASET_DEFAULTS))}")
    p.add_argument("--data-root", help="directory holding CIFAR/MNIST files in their standard formats")
    p.add_argument("--model", help="model name (default: the dataset's, e.g. cnn1d for mnist1d)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", default="sgd", help="sgd, adam or adamw")
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-schedule", default="cosine", help="cosine, step or none")
    p.add_argument("--milestones", default="", help="epochs for --lr-schedule step, e.g. 150,225,275")
    p.add_argument("--partition", help="params, time, uniform, flops, or boundaries like 3,6 (default: the "
                                       "method's: params; dtrp: flops, its batch compensation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="float32 or float64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 per process under dist)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint", action="store_true", help="save OUT/checkpoint.pt after every epoch")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose checkpoint is DIR/checkpoint.pt")
    d = p.add_argument_group("distributed engine")
    d.add_argument("--engine", default="sim", choices=["sim", "dist"])
    d.add_argument("--replicas", "-D", type=int, default=1, help="data-parallel replicas per stage")
    d.add_argument("--backend", help="gloo or nccl (default: nccl on cuda, else gloo)")
    d.add_argument("--timeout", type=float, default=60.0, help="seconds to wait on a peer before failing")
    d.add_argument("--init-method", help="rendezvous URL, e.g. tcp://10.0.0.1:29500 (default: a free local port)")


def _config(a, method: str, out: str | None) -> RunConfig:
    return RunConfig(
        method=method, method_opts=_method_opts(a), stages=a.stages, dataset=a.dataset, data_root=a.data_root,
        model=a.model, epochs=a.epochs, batch_size=a.batch_size, optimizer=a.optimizer, lr=a.lr,
        momentum=a.momentum, weight_decay=a.weight_decay, lr_schedule=a.lr_schedule,
        milestones=tuple(int(m) for m in a.milestones.split(",") if m), partition=a.partition, seed=a.seed,
        dtype=a.dtype, device=a.device, engine=a.engine, replicas=a.replicas, backend=a.backend,
        timeout=a.timeout, init_method=a.init_method, out=out, progress=not a.no_progress, threads=a.threads,
        checkpoint=a.checkpoint, resume=a.resume)


def cmd_train(a) -> int:
    from .run import train
    s = train(_config(a, a.method, a.out))
    if s is None:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    print(f"{s['method']} K={s['stages']} on {s['dataset']}/{s['model']}: test_acc {s['test_acc']:.4f} "
          f"(train_loss {s['train_loss']:.4f}, {s['time_s']:.1f} s)" + (f" -> {a.out}" if a.out else ""))
    return 0


def cmd_compare(a) -> int:
    """Train several methods with the same seed, data and epochs; print a table beside BP."""
    from .run import train
    import os
    rows = []
    for name in a.methods.split(","):
        out = os.path.join(a.out, name) if a.out else None
        s = train(_config(a, name, out))
        rows.append((s["method"], s["test_acc"], s["train_loss"], s["time_s"]))
        print(f"  {s['method']:<28} test_acc {s['test_acc']:.4f}", file=sys.stderr)
    print(f"\n{a.dataset}, K={a.stages}, seed {a.seed}")
    print(f"{'method':<28} {'test_acc':>8} {'train_loss':>10} {'time_s':>7}")
    for m, acc, loss, t in rows:
        print(f"{m:<28} {acc:>8.4f} {loss:>10.4f} {t:>7.1f}")
    return 0


def cmd_schedule(a) -> int:
    m = get_method(a.method, **_method_opts(a))
    s = Schedule(m.family, a.stages, a.batches, m.order, m.accumulate)
    validate(s)
    if a.json:
        d = {"method": m.name, **s.to_dict(),
             "staleness": [[s.staleness(k, b) for b in range(a.batches)] for k in range(a.stages)]}
        print(json.dumps(d))
    else:
        print(f"{m.describe()}  ({m.paper})")
        print(format_grid(s))
    return 0


def cmd_plot(a) -> int:
    from .plot import plot_runs
    print(plot_runs(a.runs, a.out))
    return 0


def cmd_bench(a) -> int:
    from .bench import run_cli
    return run_cli(a)


def cmd_methods(a) -> int:
    for name in sorted(METHODS):
        m = get_method(name)
        print(f"{name:<8} {m.family:<10} {m.activations:<9} {m.paper}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchdecoupled", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one method")
    t.add_argument("--method", "-m", default="fdg", help=f"one of {', '.join(sorted(METHODS))}")
    t.add_argument("--out", help="run directory for metrics.jsonl and summary.json")
    _add_run_options(t)
    _add_method_options(t)
    t.set_defaults(fn=cmd_train)
    c = sub.add_parser("compare", help="train several methods with the same seed and print a table")
    c.add_argument("--methods", default="bp,fdg", help="comma-separated, e.g. bp,ddg,fdg,adl")
    c.add_argument("--out", help="parent directory: one run directory per method")
    _add_run_options(c)
    _add_method_options(c)
    c.set_defaults(fn=cmd_compare)
    s = sub.add_parser("schedule", help="draw a method's tick x stage schedule")
    s.add_argument("--method", "-m", default="fdg")
    s.add_argument("--stages", "-K", type=int, default=3)
    s.add_argument("--batches", "-N", type=int, default=8)
    s.add_argument("--json", action="store_true", help="print one JSON object (delay, grid, staleness)")
    _add_method_options(s)
    s.set_defaults(fn=cmd_schedule)
    pl = sub.add_parser("plot", help="plot test accuracy, loss and staleness of run directories")
    pl.add_argument("runs", nargs="+", help="run directories (written by train/compare --out)")
    pl.add_argument("--out", default="runs.png", help="PNG file to write (default runs.png)")
    pl.set_defaults(fn=cmd_plot)
    sub.add_parser("methods", help="list the methods").set_defaults(fn=cmd_methods)
    b = sub.add_parser("bench", help="speed: images/s of BP, FDG/ADL/DTRP (dist) and torch pipelining, side by side")
    from .bench import add_arguments
    add_arguments(b)
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        return a.fn(a)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"torchdecoupled: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a distributed run whose stage failed: one line naming the stage
        from .engines.dist import DistributedError
        if not isinstance(e, DistributedError):
            raise
        print(f"torchdecoupled: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("torchdecoupled: interrupted", file=sys.stderr)
        return 130
