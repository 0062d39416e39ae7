"""The options of ``torchdecoupled train | compare | schedule``: their definitions, defaults and help, and
how the given ones (command line over ``--config`` file over defaults) become a ``RunConfig``'s fields."""
from __future__ import annotations

import argparse

from . import config_file
from .config import DATASET_DEFAULTS, RunConfig
from .heads import HEADS
from .models import MODELS
from .predict import PREDICTORS

_D = RunConfig()  # the defaults --help shows: every run option's argparse default is None (see _given)
BOOL = argparse.BooleanOptionalAction
RAW = argparse.RawDescriptionHelpFormatter
COMPARE_METHODS = ["bp", "fdg"]
TRAIN_KEYS = config_file.KEYS
COMPARE_KEYS = {**{k: v for k, v in TRAIN_KEYS.items() if k not in ("method", "resume")}, "methods": list}
SCHEDULE_DOC = """Draw a method's schedule: stages as rows, ticks as columns, each cell the stage's actions in that
tick (F forward, B backward, with the batch number; U update), then each stage's delay d_k.
Only the method's family, --order and --accumulate shape the grid; its other options (beta, warmup,
predictor, head) change what a stage computes, not when, and schedule does not take them."""


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, like 150,225; got {text!r}") from None


class _Words(argparse.Action):
    """An option of several words (``--lr-correction pipemare 7``), kept as one string."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, " ".join(values))


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _epilog(command: str) -> str:
    w = max(len(n) for n in [*DATASET_DEFAULTS, "dataset"])
    m = max(len(d[0]) for d in [*DATASET_DEFAULTS.values(), ("model",)])
    rows = [f"  {name:<{w}}  {model:<{m}}  {epochs:>6}  {bs:>10}  {lr:g}"
            for name, (model, epochs, bs, lr) in sorted(DATASET_DEFAULTS.items())]
    example = 'methods = ["bp", "fdg"]' if command == "compare" else 'method = "adl"\n  accumulate = 4'
    saved = ("each run directory OUT/METHOD gets the\nresolved configuration of its run as config.toml"
             if command == "compare" else "--out DIR saves the\nresolved configuration as DIR/config.toml: "
                                          "`train --config DIR/config.toml` repeats the run")
    return (f"defaults per dataset (where --model, --epochs, --batch-size, --lr are not given):\n"
            f"  {'dataset':<{w}}  {'model':<{m}}  {'epochs':>6}  {'batch size':>10}  lr\n" + "\n".join(rows) +
            f"\n\n--config FILE.toml: one key per option, named as the option with underscores, e.g.\n"
            f"  {example}\n  stages = 3\n  batch_size = 64\n  milestones = [150, 225]\n"
            f"Options given on the command line override the file; {saved}.")


def _method_opts(a) -> dict:
    return {k: getattr(a, k) for k in config_file.METHOD_OPTS if getattr(a, k, None) is not None}


def _add_grid_options(g) -> None:
    """The method options that change a schedule's grid (the only ones ``schedule`` takes)."""
    g.add_argument("--accumulate", "-M", type=int, metavar="M",
                   help="backwards summed per update: ADL (default 2), BP (default 1)")
    g.add_argument("--order", choices=["bf", "fb"],
                   help="FDG, ADL, DSP: bf (B, U, then F; the default) or fb (F, then B, U)")


def _add_method_options(p: argparse.ArgumentParser,
                        title: str = "method options (where the method takes them; default: the method's)") -> None:
    g = p.add_argument_group(title)
    g.add_argument("--beta", "--gamma", type=float,
                   help="gradient shrinking factor in (0, 1]: FDG, ADL, DSP beta, DTRP gamma (default 1: off)")
    _add_grid_options(g)
    g.add_argument("--warmup", "--warmup-epochs", dest="warmup_epochs", type=float, metavar="E",
                   help="ADL: linear learning-rate warm-up over E epochs from 0.01 x lr (default 0: none)")
    g.add_argument("--predictor", help=f"DTRP: weight prediction for the forward: {', '.join(sorted(PREDICTORS))} "
                                       f"(default none)")
    g.add_argument("--head", help=f"DGL, local: the auxiliary head: {', '.join(sorted(HEADS))} (default: dgl for "
                                  f"dgl, linear for local)")


def _add_run_options(p: argparse.ArgumentParser, resume: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="read the options from FILE (.toml; .yaml, .yml with PyYAML), "
                                                    "keys named as below; the command line overrides it "
                                                    "(default: none)")
    p.add_argument("--stages", "-K", type=int, help=f"number of stages K (default {_D.stages})")
    p.add_argument("--dataset", help=f"{', '.join(sorted(DATASET_DEFAULTS))} (default {_D.dataset})")
    p.add_argument("--data-root", metavar="DIR", help="where the datasets read from files are: MNIST, "
                                                      "Fashion-MNIST, CIFAR in their standard formats, folder's "
                                                      "DIR/train and DIR/val (default: $TORCHDECOUPLED_DATA, "
                                                      "else ./data)")
    p.add_argument("--download", action=BOOL, help="download the dataset into --data-root if it is missing (MNIST, "
                                                   "Fashion-MNIST, CIFAR), checking its SHA-256 (default: off)")
    p.add_argument("--model", help=f"{', '.join(sorted(MODELS))} (default: the dataset's, below)")
    p.add_argument("--epochs", type=int, help="epochs (default: the dataset's, below)")
    p.add_argument("--batch-size", type=int, help="mini-batch size (default: the dataset's, below)")
    p.add_argument("--optimizer", help="sgd, adam, adamw or nag-async (NAdam, beta1 0.99, decoupled weight decay: "
                                       "Ajanthan et al. 2025; stages that recompute get a per-stage momentum) "
                                       "(default: the dataset's recipe: sgd; text: adamw)")
    p.add_argument("--lr", type=float, help="learning rate (default: the dataset's, below)")
    p.add_argument("--momentum", type=float, help=f"SGD's momentum; nag-async: the base m of a recomputing stage's "
                                                  f"momentum (default {_D.momentum}; adam, adamw: unused)")
    p.add_argument("--weight-decay", type=float, help=f"every optimizer's weight decay (default {_D.weight_decay:g})")
    p.add_argument("--lr-schedule", help="cosine (annealed to 0 over --epochs), step (x0.1 at each of "
                                         "--milestones), warmup_cosine (per update: linear warm-up over --lr-warmup "
                                         "of the updates, then cosine to 0) or none (default: the dataset's recipe: "
                                         "cosine; text: warmup_cosine)")
    p.add_argument("--lr-warmup", type=float, metavar="F", help=f"warmup_cosine: the fraction of the updates that "
                                                                f"warm up (default {_D.lr_warmup:g})")
    p.add_argument("--milestones", type=_ints, help="epochs for --lr-schedule step, e.g. 150,225,275 (default: none)")
    p.add_argument("--lr-correction", nargs="+", action=_Words, metavar="WORD",
                   help="none, or pipemare T: stage k runs at lr / tau_k^(1 - min(t / T, 1)), tau_k its delay in "
                        "updates, t its update count, T given in epochs (PipeMare, Yang et al. 2021); multiplies "
                        f"--lr-schedule (default {_D.lr_correction})")
    p.add_argument("--partition", help="params, time, uniform, flops, or cut points like 3,6 (default: the "
                                       "method's: params; dtrp: flops, its batch compensation)")
    p.add_argument("--seed", type=int, help=f"seed of the initial weights, batch order and augmentation "
                                            f"(default {_D.seed})")
    p.add_argument("--dtype", help=f"the weights' dtype: float32 or float64 (default {_D.dtype})")
    p.add_argument("--precision", help=f"float32, or bf16: each stage's forward under bf16 autocast, float32 master "
                                       f"weights, activations and gradients between stages in bf16 (default "
                                       f"{_D.precision})")
    p.add_argument("--context", type=int, metavar="T", help=f"text: tokens (bytes) per window, the model's context "
                                                            f"length (default {_D.context})")
    p.add_argument("--device", help=f"cpu, cuda or cuda:N (default {_D.device}; with --engine dist, cuda gives "
                                    f"each stage process its own GPU)")
    p.add_argument("--threads", type=int, help="torch threads per stage process, and in the simulator (default 1: "
                                               "the same command gives the same numbers)")
    p.add_argument("--progress", action=BOOL, help="a progress bar on stderr (default: on)")
    p.add_argument("--checkpoint", action=BOOL, help="save OUT/checkpoint.pt after every epoch "
                                                     "(default: off)")
    if resume:
        p.add_argument("--resume", metavar="DIR", help="continue the run whose checkpoint is DIR/checkpoint.pt, "
                                                       "with either engine (default: start afresh)")
    p.add_argument("--force", action=BOOL, help="write into an --out that holds an earlier run, deleting its "
                                                "results first (default: off: such an --out is refused"
                                                + (", unless --resume names it)" if resume else ")"))
    p.add_argument("--tensorboard", action=BOOL, help="write TensorBoard event files into --out (default: off)")
    d = p.add_argument_group("distributed engine")
    d.add_argument("--engine", choices=["sim", "dist"], help=f"sim: every stage in this process; dist: one process "
                                                             f"per stage (default {_D.engine})")
    d.add_argument("--replicas", "-D", type=int, help=f"data-parallel replicas per stage, K x D processes "
                                                      f"(default {_D.replicas})")
    d.add_argument("--backend", help="gloo or nccl (default: nccl with --device cuda, else gloo)")
    d.add_argument("--timeout", type=float, help=f"seconds a stage waits on a peer before the run fails "
                                                 f"(default {_D.timeout:g})")
    d.add_argument("--init-method", help="rendezvous URL, e.g. tcp://10.0.0.1:29500 or file:///path (default: a "
                                         "free local port; env:// under torchrun)")
    d.add_argument("--trace", action=BOOL, help="record the measured pipeline as OUT/timeline.json and "
                                                "timeline.png (default: on)")


def _given(a, keys: dict) -> dict:
    """The options the command line gives (a run option's argparse default is None: not given)."""
    return {k: v for k, v in vars(a).items() if k in keys and v is not None}


def _options(a, keys: dict) -> dict:
    """The --config file's options, overridden by the command line's."""
    return {**(config_file.read(a.config, keys) if a.config else {}), **_given(a, keys)}
