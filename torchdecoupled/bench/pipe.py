"""torch.distributed.pipelining as a contender: one rank of any of its schedules (``jobs.PIPE``), run in a
child process of the benchmark, with the same data, model, loss and SGD as every other contender.

Stage placement. GPipe and 1F1B (Huang et al. 2019; Narayanan et al. 2019, PipeDream-Flush) run one
pipeline stage per rank: the model cut into K pieces. The others run two stages per rank, the model cut
into 2K pieces, placed as torch's own ``generate_stage_to_rank_mapping`` places them (and the schedules
require): "loop" for Interleaved 1F1B (Narayanan et al. 2021, arXiv 2104.04473), Looped BFS (Lamy-Poirier
2023, arXiv 2211.05953) and Interleaved Zero Bubble (Qi et al. 2024, ZB1P, arXiv 2401.10241): rank r holds
pieces r and r + K; "v" for ZB-V (Qi et al. 2024, Section 6) and DualPipeV (DeepSeek-V3, arXiv 2412.19437):
rank r holds pieces r and 2K - 1 - r, so rank 0 holds the first and the last piece.

    K = 2           piece   0   1   2   3
      single         rank   0   1            (2 pieces)
      loop           rank   0   1   0   1
      v              rank   0   1   1   0

Every schedule is synchronous: each step runs the batch's micro-batches forward and backward, the
gradients (of the mean loss: ``scale_grads``) accumulate, and the step ends flushed; then SGD steps. So
its loss after N steps equals BP's for the same N batches (tests/test_bench.py checks it).
"""
from __future__ import annotations

from . import workload
from .jobs import PIPE, Job

PIECES = {"single": 1, "loop": 2, "v": 2}  # pieces (pipeline stages) per rank
INTERLEAVED = ("ScheduleInterleaved1F1B", "ScheduleInterleavedZeroBubble")


def placement(style: str, world: int) -> list[list[int]]:
    """For each rank, the pieces it holds: see the module docstring's table."""
    if style == "single":
        return [[r] for r in range(world)]
    if style == "loop":
        return [[r, r + world] for r in range(world)]
    if style == "v":
        return [[r, 2 * world - 1 - r] for r in range(world)]
    raise ValueError(f"unknown stage placement {style!r} (valid: {', '.join(PIECES)})")


def num_pieces(contender: str, world: int) -> int:
    return PIECES[PIPE[contender][1]] * world


def microbatch_problem(contender: str, m: int, world: int, batch: int) -> str | None:
    """Why ``m`` micro-batches cannot run (torch's own checks in schedules.py, and equal micro-batches:
    the mean of their losses is then the batch's loss), or None."""
    cls, _ = PIPE[contender]
    stages = num_pieces(contender, world)
    if m < 1 or batch % m:
        return f"batch {batch} does not split into {m} equal micro-batches"
    if cls == "Schedule1F1B" and m < stages:
        return f"1F1B needs at least {stages} micro-batches (one per stage), got {m}"
    if cls == "ScheduleDualPipeV" and m < stages:
        return f"DualPipeV needs at least {stages} micro-batches (one per stage), got {m}"
    rounds = max(1, m // world)
    if cls in INTERLEAVED and m % rounds:
        return f"{cls[8:]} needs a multiple of its {rounds} rounds (m // {world}) of micro-batches, got {m}"
    return None


def _example(pieces, s: int, dataset, mb: int):
    """Piece s's input for PipelineStage: a later piece's input carries a gradient, and requires_grad must
    say so (else a silent hang)."""
    import torch
    if s == 0:
        return dataset.train_x[:mb].clone()
    with torch.no_grad():
        h = dataset.train_x[:1]
        for p in pieces[:s]:
            h = p.eval()(h)
            p.train()
    return torch.zeros((mb, *h.shape[1:]), dtype=h.dtype, requires_grad=True)


def run_pipe(job: Job, rank: int, rendezvous) -> dict:
    """One rank: PipelineStage(s) of this rank's pieces, the schedule, ``job.first + job.steps`` steps."""
    import torch
    import torch.distributed as dist
    from torch.distributed import pipelining
    from ..engines.dist_layout import Layout, init_process_group
    from ..partition import split

    world = job.world
    cls_name, style = PIPE[job.contender]
    layout = placement(style, world)
    n = num_pieces(job.contender, world)
    init_process_group("gloo", Layout(world, 1, rank), rendezvous, job.timeout)
    dataset = workload.data(job)
    batches, net = workload.batches(job, dataset), workload.model(job, dataset.num_classes)
    pieces = split(net, n, boundaries=list(job.boundaries))
    mine, mb = layout[rank], job.batch // job.microbatches
    stages = [pipelining.PipelineStage(pieces[s], s, n, torch.device("cpu"),
                                       input_args=(_example(pieces, s, dataset, mb),)) for s in mine]
    cls = getattr(pipelining, cls_name)
    schedule = cls(stages[0] if style == "single" else stages, job.microbatches, loss_fn=workload.loss_fn(job))
    torch_places = dict(stages[0].stage_index_to_group_rank)
    if style != "single" and torch_places != {s: r for r, ps in enumerate(layout) for s in ps}:
        raise RuntimeError(f"{cls_name} places pieces {torch_places}, this runner {layout}: update pipe.placement")
    opt = workload.sgd([p for s in mine for p in pieces[s].parameters()])
    first, last = 0 in mine, n - 1 in mine
    dist.barrier()
    marks, losses = [], []
    for b in range(job.first + job.steps):
        marks.append(workload.clock())
        x, y = batches.get(b)
        losses.clear()
        schedule.step(*((x,) if first else ()), **({"target": y, "losses": losses} if last else {}))
        opt.step()
        opt.zero_grad(set_to_none=True)
    marks.append(workload.clock())
    loss = float(sum(v.detach() for v in losses) / len(losses)) if losses else None
    dist.barrier()
    dist.destroy_process_group()
    return {"marks": marks, "loss": loss, "pieces": mine, "torch_placement": torch_places}
