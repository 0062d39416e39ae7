"""The command line: ``torchdecoupled train | compare | eval | schedule | plot | methods | bench``."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys

from . import config_file, outdir
from .config import RunConfig
from .methods import METHODS, get_method
from .schedule import Schedule, format_grid, validate
from .cli_options import (_D, COMPARE_KEYS, COMPARE_METHODS, RAW, SCHEDULE_DOC, TRAIN_KEYS, _add_grid_options,
                          _add_method_options, _add_run_options, _epilog, _method_opts, _names, _options)


class _Parser(argparse.ArgumentParser):
    """argparse's errors in one line (its usage block is what --help shows)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _announce(cfg: RunConfig) -> RunConfig:
    """Print the resolved configuration on stderr and save it as OUT/config.toml, before the run starts (a
    directory that holds another run is refused first: nothing of it is touched)."""
    outdir.check(cfg.out, cfg.resume, cfg.force)
    try:
        saved = f" (saved as {config_file.write(cfg, cfg.out)})" if cfg.out else ""
    except OSError as e:  # a read-only place, a path through a file, a name too long
        raise ValueError(f"--out {cfg.out!r}: cannot write there ({e.strerror or e}): choose a directory you "
                         f"can write to") from None
    print(f"config{saved}: {config_file.one_line(cfg)}", file=sys.stderr)
    return cfg


@contextlib.contextmanager
def _withdrawn_if_refused(out: str | None):
    """A run refused after its configuration was saved (by a stage process while setting up) takes its
    OUT/config.toml back, and OUT itself if it made it: a refused run leaves no run directory."""
    made = bool(out) and not os.path.exists(out)
    try:
        yield
    except (ValueError, TypeError):
        if out and os.path.isdir(out) and not any(os.path.exists(os.path.join(out, n)) for n in outdir.RUN_FILES):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out, config_file.FILE))
                if made:
                    os.rmdir(out)
        raise


def cmd_train(a) -> int:
    from .run import train
    cfg = config_file.to_config(_options(a, TRAIN_KEYS)).resolved()
    with _withdrawn_if_refused(cfg.out):
        s = train(cfg, on_ready=_announce)
    if s is None:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    if cfg.out and cfg.partition == "time":  # measured cuts differ from run to run: save the ones this run used
        config_file.write(dataclasses.replace(cfg, partition=",".join(map(str, s["boundaries"]))), cfg.out)
    print(f"{s['method']} K={s['stages']} on {s['dataset']}/{s['model']}: test_acc {s['test_acc']:.4f} "
          f"(train_loss {s['train_loss']:.4f}, {s['time_s']:.1f} s)" + (f" -> {cfg.out}" if cfg.out else ""))
    return 0


def cmd_compare(a) -> int:
    """Train several methods with the same seed, data and epochs; print a table beside BP."""
    from .run import train
    opts = _options(a, COMPARE_KEYS)
    methods, parent = opts.pop("methods", COMPARE_METHODS), opts.pop("out", None)
    if not methods:
        raise ValueError("--methods names no method (e.g. --methods bp,fdg)")
    cfgs = [config_file.to_config({**opts, "method": m, "out": os.path.join(parent, m) if parent else None}).resolved()
            for m in methods]  # every bad value fails here, before the first run
    models = sorted({c.model for c in cfgs})
    if len(models) > 1:  # petra's default is the dataset's reversible model: compare one network
        raise ValueError(f"--methods {','.join(methods)} would train different models ({', '.join(models)}: petra "
                         f"defaults to the dataset's reversible one): name one with --model, e.g. --model "
                         f"{next(c.model for c in cfgs if c.method == 'petra')}")
    rows = []
    for cfg in cfgs:
        with _withdrawn_if_refused(cfg.out):
            s = train(cfg, on_ready=_announce)
        rows.append((s["method"], s["test_acc"], s["train_loss"], s["time_s"]))
        print(f"  {s['method']:<28} test_acc {s['test_acc']:.4f}", file=sys.stderr)
    print(f"\n{cfgs[0].dataset}, K={cfgs[0].stages}, seed {cfgs[0].seed}")
    print(f"{'method':<28} {'test_acc':>8} {'train_loss':>10} {'time_s':>7}")
    for m, acc, loss, t in rows:
        print(f"{m:<28} {acc:>8.4f} {loss:>10.4f} {t:>7.1f}")
    return 0


SCHEDULE_MAX = {"stages": 64, "batches": 1024}  # a grid to read; larger ones take minutes to check and draw


def cmd_schedule(a) -> int:
    for name, most in SCHEDULE_MAX.items():
        if not 1 <= getattr(a, name) <= most:
            raise ValueError(f"--{name} must be in [1, {most}] for a drawing, got {getattr(a, name)}")
    m = get_method(a.method, **_method_opts(a))
    s = Schedule(m.family, a.stages, a.batches, m.order, m.accumulate, m.param_messages)
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


def cmd_plan(a) -> int:
    from .plan.cli import run
    return run(a)


def cmd_methods(a) -> int:
    for name in sorted(METHODS):
        m = get_method(name)
        print(f"{name:<8} {m.family:<10} {m.activations:<9} {m.paper}")
    return 0


def cmd_eval(a) -> int:
    """Score RUN/model.pt on the test set: the run's final test_loss and test_acc, or another dataset's."""
    from .run import evaluate_run
    r = evaluate_run(a.run, a.dataset, a.data_root)
    if a.json:
        print(json.dumps({"run": a.run, **r}))
    else:
        print(f"{a.run} on {r['dataset']}: test_loss {r['test_loss']:.4f} test_acc {r['test_acc']:.4f}")
    return 0


def cmd_sample(a) -> int:
    """Continue --prompt with --tokens bytes drawn from a finished language-model run."""
    import torch

    from .sample import sample
    torch.set_num_threads(1)
    print(sample(a.run, a.prompt, a.tokens, temperature=a.temperature, top_k=a.top_k, seed=a.seed))
    return 0


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="torchdecoupled", description=__doc__)
    from .version import version
    p.add_argument("--version", action="version", version=f"torchdecoupled {version()}")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one method", epilog=_epilog("train"), formatter_class=RAW)
    t.add_argument("--method", "-m", help=f"one of {', '.join(sorted(METHODS))} (default {_D.method})")
    t.add_argument("--out", metavar="DIR", help="run directory: config.toml, metrics.jsonl, summary.json; "
                                                "checkpoint.pt, timeline.json and .png, TensorBoard events where "
                                                "asked (default: none, nothing is written)")
    _add_run_options(t)
    _add_method_options(t)
    t.set_defaults(fn=cmd_train)
    c = sub.add_parser("compare", help="train several methods with the same seed and print a table",
                       epilog=_epilog("compare"), formatter_class=RAW)
    c.add_argument("--methods", type=_names, help=f"comma-separated, e.g. bp,ddg,fdg,adl "
                                                  f"(default {','.join(COMPARE_METHODS)})")
    c.add_argument("--out", metavar="DIR", help="parent directory: DIR/METHOD is each method's run directory "
                                                "(default: none, nothing is written)")
    _add_run_options(c, resume=False)
    _add_method_options(c, "method options (applied to every method of --methods: each must take them)")
    c.set_defaults(fn=cmd_compare)
    s = sub.add_parser("schedule", help="draw a method's tick x stage schedule", description=SCHEDULE_DOC,
                       formatter_class=RAW)
    s.add_argument("--method", "-m", default=_D.method, help=f"one of {', '.join(sorted(METHODS))} "
                                                             f"(default {_D.method})")
    s.add_argument("--stages", "-K", type=int, default=_D.stages, help=f"number of stages K (default {_D.stages})")
    s.add_argument("--batches", "-N", type=int, default=8, help="mini-batches to schedule (default 8)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of the drawing: method, "
                                                       "family, stages, batches, order, accumulate, delay, ticks, "
                                                       "grid[tick][stage], staleness[stage][batch]")
    _add_grid_options(s.add_argument_group("method options that change the grid (default: the method's)"))
    s.set_defaults(fn=cmd_schedule)
    pl = sub.add_parser("plot", help="plot test accuracy, losses, staleness and idle fraction of runs")
    pl.add_argument("runs", nargs="+", help="run directories (train --out), or directories holding runs "
                                            "(compare --out)")
    pl.add_argument("--out", default="runs.png", help="PNG file to write (default runs.png)")
    pl.set_defaults(fn=cmd_plot)
    e = sub.add_parser("eval", help="score a finished run's final weights (RUN/model.pt) on a test set")
    e.add_argument("run", metavar="RUN", help="a run directory written by train --out")
    e.add_argument("--dataset", help="the dataset whose test set to score (default: the run's)")
    e.add_argument("--data-root", metavar="DIR", help="where that dataset's files are (default: the run's)")
    e.add_argument("--json", action="store_true", help="print one JSON object: run, dataset, test_loss, test_acc")
    e.set_defaults(fn=cmd_eval)
    sm = sub.add_parser("sample", help="generate text from a finished language-model run (train --dataset text)")
    sm.add_argument("run", metavar="RUN", help="a run directory written by train --dataset text --out")
    sm.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    sm.add_argument("--tokens", type=int, default=200, help="bytes to generate (default 200)")
    sm.add_argument("--temperature", type=float, default=1.0, help="softmax temperature > 0 (default 1)")
    sm.add_argument("--top-k", type=int, default=0, help="draw among the K likeliest bytes (default 0: all)")
    sm.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    sm.set_defaults(fn=cmd_sample)
    sub.add_parser("methods", help="list the methods").set_defaults(fn=cmd_methods)
    b = sub.add_parser("bench", help="speed: images/s of BP, FDG/ADL/DTRP (dist) and torch pipelining, side by side")
    from .bench import add_arguments
    add_arguments(b)
    b.set_defaults(fn=cmd_bench)
    from .plan.cli import HELP, add_arguments as plan_arguments
    pn = sub.add_parser("plan", help=HELP, description=HELP)
    plan_arguments(pn)
    pn.set_defaults(fn=cmd_plan)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        return a.fn(a)
    except (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
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
