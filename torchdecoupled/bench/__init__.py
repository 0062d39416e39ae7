"""Speed: images/s of BP, of our distributed engine (FDG, ADL, DTRP) and of torch.distributed.pipelining
(GPipe, 1F1B), side by side in one run, on CIFAR-shaped synthetic data (issue 4, "Speed").

Contenders (K = 2 by default; every multi-process contender runs one process per stage, one thread
each, gloo on CPU):

- ``bp_1thread`` / ``bp_2threads``: a plain PyTorch training step (forward, loss, backward, SGD step)
  in one process with 1 / 2 threads;
- ``fdg``, ``adl`` (M = 2), ``dtrp``: ``--engine dist``'s own stage processes (``StageProcess``: the
  same code as ``torchdecoupled train --engine dist``), cut where ``--partition time`` cuts (the
  per-layer costs are measured once, up front, and every run of the benchmark uses that cut; DTRP's time
  balance counts its recompute);
- ``pipelining_gpipe`` / ``pipelining_1f1b``: ``PipelineStage`` + ``ScheduleGPipe`` / ``Schedule1F1B``
  on the same processes and threads, the same model split as FDG, the best micro-batch count of
  ``--microbatches`` (by default a pilot run of each count picks the one that is repeated; ``--select
  all`` repeats every count and takes the best median).

Fairness: the same model, seed, batch size, data (``data.Batches`` over ``load_synthetic``) and SGD
(momentum 0.9, weight decay 5e-4) everywhere; every run is a fresh set of processes (forkserver, torch
preloaded); every contender runs once per repeat, repeats interleave all contenders (the order rotates
from repeat to repeat), and the reported number is the median over repeats.

Steady state only: each process records its clocks at the start of every tick (our engine) or step
(the others). A run's rate is ``batch * M / period``, the period being the mean over its processes of
``clock at step W + M - clock at step W`` (in steady state every process of a pipeline has the same
period; over a short window they differ by how far one runs ahead of the other), where W skips the
warm-up (and, for our engine, the 2(K-1) ticks that fill the pipeline) and M is ``--steps``.
Start-up, warm-up, the pipeline's drain and the final evaluation are outside the window. Per process the run also reports its peak RSS (VmHWM), the CPU its main thread used (compute)
and the CPU of its other threads (gloo's transport threads), and, for our engine, the time it blocked on
messages (from the engine's own timeline recorder).

    python benchmarks/speed.py --json                                   # ResNet-20: {contender: images/s}
    python benchmarks/speed.py --model resnet20,resnet56 --steps 4 --doc docs/speed.md   # about 10 min
"""
from .cli import add_arguments, main, run_cli
from .harness import BenchError, bench_model, plan_jobs, run_job, summarize_run, time_cuts
from .jobs import CONTENDERS, MALLOC, OURS, PIPE, Job
from .report import NOTES_MARK, decompose, detail_table, markdown, verdict, write_report

__all__ = ["CONTENDERS", "MALLOC", "NOTES_MARK", "OURS", "PIPE", "BenchError", "Job", "add_arguments", "bench_model",
           "decompose", "detail_table", "main", "markdown", "plan_jobs", "run_cli", "run_job", "summarize_run",
           "time_cuts", "verdict", "write_report"]
