"""``torchdecoupled plan``: its options and what it runs (a thin face over ``plan.api``)."""
from __future__ import annotations

import sys

from ..methods import METHODS
from .links import LINKS

HELP = "predict speed, memory and the best cut for K stages on given devices and links (nothing is trained)"


def stage_range(text: str) -> list[int]:
    """'4' -> [4]; '1-8' -> [1..8]; '2,4,8' -> [2, 4, 8]."""
    ks: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
            if a < 1 or b < a:
                raise ValueError
            ks += range(a, b + 1)
    except ValueError:
        raise ValueError(f"bad --stages {text!r}: give K, a range like 1-8, or a list like 2,4,8 "
                         f"(integers >= 1, ranges low-high)") from None
    return ks


def add_arguments(p) -> None:
    p.add_argument("--model", default="resnet20", help="a zoo model (default resnet20)")
    p.add_argument("--dataset", default="cifar10", help="the input shape and classes of this dataset (default cifar10; "
                                                        "nothing is loaded)")
    p.add_argument("--batch-size", type=int, default=128, help="samples per batch (default 128)")
    p.add_argument("--stages", "-K", default="1-8", help="K, a range 1-8 or a list 2,4,8 (default 1-8)")
    p.add_argument("--method", "-m", default="fdg", help=f"comma-separated, of {', '.join(sorted(METHODS))} "
                                                         f"(default fdg)")
    p.add_argument("--replicas", "-D", type=int, default=1, help="data-parallel replicas per stage (default 1)")
    p.add_argument("--link", default="gloo-local", help=f"between stages: {', '.join(LINKS)}, or BW,LAT in GB/s and "
                                                        f"microseconds (default gloo-local)")
    p.add_argument("--costs", metavar="FILE", help="per-layer costs measured elsewhere (a JSON cost file, "
                                                   "torchdecoupled/plan/costs.py); default: measure here, 1 thread")
    p.add_argument("--save-costs", metavar="FILE", help="write the costs measured here to FILE")
    p.add_argument("--cores", type=int, help="cores the K x D processes share, modelled as time-sharing "
                                             "(default: one core per process)")
    p.add_argument("--contention", type=float, help="with --cores: the fraction by which compute slows while the "
                   "processes share the host's caches and memory (default 0.06, measured on a 2-core VM)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per layer, the median kept (default 3)")
    p.add_argument("--out", metavar="DIR", help="write DIR/plan.json and DIR/plan.png")
    p.add_argument("--json", action="store_true", help="print plan.json's content instead of the table")


def run(a) -> int:
    import json

    from . import costs as costs_mod
    from .api import plan, zoo_inputs
    from .report import table, write

    ks = stage_range(a.stages)
    methods = [m.strip() for m in a.method.split(",") if m.strip()]
    if not methods:
        raise ValueError("--method names no method (e.g. --method fdg,dsp)")
    if a.batch_size < 1 or a.replicas < 1 or a.repeats < 1:
        raise ValueError(f"--batch-size, --replicas and --repeats must be >= 1 (got {a.batch_size}, {a.replicas}, "
                         f"{a.repeats})")
    if a.cores is not None and a.cores < 1:
        raise ValueError(f"--cores must be >= 1 (got {a.cores})")
    from .links import get_link
    link = get_link(a.link)  # a bad link fails before anything is measured
    given = costs_mod.load(a.costs) if a.costs else None
    if given is None:  # measure as a stage process runs: with the engine's allocator settings (no page faults)
        from ..engines.malloc import keep_freed_memory
        keep_freed_memory()
    model, sample, target = zoo_inputs(a.model, a.dataset, a.batch_size)
    if a.save_costs and given is None:
        print(f"measuring {a.model} on this machine ...", file=sys.stderr)
        given = costs_mod.measure(model, sample, target, repeats=a.repeats, model_name=a.model)
        costs_mod.save(given, a.save_costs)
    results = plan(model, sample, target, stages=ks, method=methods, replicas=a.replicas, link=link, costs=given,
                   cores=a.cores, repeats=a.repeats, contention=a.contention)
    meta = {"model": a.model, "dataset": a.dataset, "batch": a.batch_size, "link": link.describe(), "cores": a.cores,
            "costs": a.costs or "measured here", "replicas": a.replicas, "contention": a.contention}
    if a.json:
        print(json.dumps({**meta, "results": [r.to_dict() for r in results]}))
    else:
        print(table(results))
    if a.out:
        print("wrote " + ", ".join(write(results, a.out, meta)), file=sys.stderr)
    return 0
