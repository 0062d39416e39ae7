"""Speed benchmark: images/s of BP (1 and 2 threads), FDG / ADL / DTRP on the distributed engine
(2 processes x 1 thread) and every torch.distributed.pipelining schedule (GPipe, 1F1B, Interleaved1F1B,
LoopedBFS, InterleavedZeroBubble, ZBVZeroBubble, DualPipeV) on the same processes, side by side, medians
of interleaved repeats, steady state only; tokens/s for a language model (--model gpt_mini). The
machinery is the package torchdecoupled/bench/ (also `torchdecoupled bench`).

    python benchmarks/speed.py --json                                  # ResNet-20, one JSON object
    python benchmarks/speed.py --model gpt_mini --context 64 --json    # tokens/s
    python benchmarks/speed.py --model resnet20,resnet56 --steps 4 --doc docs/speed.md
"""
import sys

from torchdecoupled.bench import main

if __name__ == "__main__":
    sys.exit(main())
