"""Speed: images/s (tokens/s for a language model) of BP, of our distributed engine (FDG, ADL, DTRP) and of
every torch.distributed.pipelining schedule, side by side in one run, on synthetic data (issue 4, "Speed").

Contenders (K = 2 by default; every multi-process contender runs one process per stage, one thread
each, gloo on CPU):

- ``bp_1thread`` / ``bp_2threads``: a plain PyTorch training step (forward, loss, backward, SGD step)
  in one process with 1 / 2 threads;
- ``fdg``, ``adl`` (M = 2), ``dtrp``: ``--engine dist``'s own stage processes (``StageProcess``: the
  same code as ``torchdecoupled train --engine dist``), cut where ``--partition time`` cuts (the
  per-layer costs are measured once, up front, and every run of the benchmark uses that cut; DTRP's time
  balance counts its recompute);
- ``pipelining_<schedule>``: ``PipelineStage`` + one of torch's schedules on the same processes and
  threads (``pipe.py``): ``gpipe`` and ``1f1b`` on FDG's cut; ``interleaved1f1b``, ``loopedbfs``,
  ``interleavedzerobubble`` (process r holds pieces r and r + K) and ``zbvzerobubble``, ``dualpipev``
  (pieces r and 2K - 1 - r) on the model cut into 2K pieces by the same costs; each with the best
  micro-batch count of ``--microbatches`` (by default a pilot run of each count picks the one that is
  repeated; ``--select all`` repeats every count and takes the best median).

Tasks: image classification (CIFAR-shaped synthetic data, cross-entropy, images/s) or, for a language
model of the zoo (``--model gpt_mini``, ``--context``), next-token prediction on uniformly random byte
tokens with ``lm_loss``, in tokens/s (batch x context per step).

Fairness: the same model, seed, batch size, data (``data.Batches`` over ``workload.data``), loss and SGD
(momentum 0.9, weight decay 5e-4) everywhere; every run is a fresh set of processes (forkserver, torch
preloaded); every contender runs once per repeat, repeats interleave all contenders (the order rotates
from repeat to repeat), and the reported number is the median over repeats.

Steady state only: each process records its clocks at the start of every tick (our engine) or step
(the others). A run's rate is ``batch * M / period`` (times the context for tokens), the period being the
mean over its processes of ``clock at step W + M - clock at step W`` (in steady state every process of a
pipeline has the same period; over a short window they differ by how far one runs ahead of the other),
where W skips the warm-up (and, for our engine, the 2(K-1) ticks that fill the pipeline) and M is
``--steps``. Start-up, warm-up, the pipeline's drain and the final evaluation are outside the window. Per
process the run also reports its peak RSS (VmHWM), the CPU its main thread used (compute) and the CPU of
its other threads (gloo's transport threads), and, for our engine, the time it blocked on messages (from
the engine's own timeline recorder).

    python benchmarks/speed.py --json                                   # ResNet-20: {contender: images/s}
    python benchmarks/speed.py --model gpt_mini --json                  # {contender: tokens/s}
    python benchmarks/speed.py --model resnet20,resnet56 --steps 4 --doc docs/speed.md   # about 10 min
"""
from .cli import add_arguments, main, run_cli, upgrade
from .harness import BenchError, bench_model, fixed_cuts, plan_jobs, run_job, summarize_run, time_cuts
from .jobs import CONTENDERS, MALLOC, OURS, PIPE, Job, is_lm
from .pipe import microbatch_problem, placement
from .report import NOTES_MARK, decompose, detail_table, markdown, verdict, write_report

__all__ = ["CONTENDERS", "MALLOC", "NOTES_MARK", "OURS", "PIPE", "BenchError", "Job", "add_arguments", "bench_model",
           "decompose", "detail_table", "fixed_cuts", "is_lm", "main", "markdown", "microbatch_problem", "placement",
           "plan_jobs", "run_cli", "run_job", "summarize_run", "time_cuts", "upgrade", "verdict", "write_report"]
