"""What the speed benchmark runs: the contenders, the shared training settings, and ``Job`` (one run of
one contender), which the harness hands to every child process."""
from __future__ import annotations

from dataclasses import dataclass, field

OURS = {"fdg": ("fdg", {}), "adl": ("adl", {"accumulate": 2}), "dtrp": ("dtrp", {})}
# torch.distributed.pipelining: contender -> (schedule class, stage placement; pipe.py draws them)
PIPE = {
    "pipelining_gpipe": ("ScheduleGPipe", "single"),
    "pipelining_1f1b": ("Schedule1F1B", "single"),
    "pipelining_interleaved1f1b": ("ScheduleInterleaved1F1B", "loop"),
    "pipelining_loopedbfs": ("ScheduleLoopedBFS", "loop"),
    "pipelining_interleavedzerobubble": ("ScheduleInterleavedZeroBubble", "loop"),
    "pipelining_zbvzerobubble": ("ScheduleZBVZeroBubble", "v"),
    "pipelining_dualpipev": ("ScheduleDualPipeV", "v"),
}
CONTENDERS = ("bp_1thread", "bp_2threads", *OURS, *PIPE)
MALLOC = ("all", "shipped", "none")
SEED, LR, MOMENTUM, WEIGHT_DECAY = 0, 0.1, 0.9, 5e-4


def is_lm(model: str) -> bool:
    """A language model of the zoo (the GPT family): token inputs, lm_loss, tokens/s."""
    from ..models import MODELS
    return model in MODELS and MODELS[model][0].__name__ == "gpt"


@dataclass(frozen=True)
class Job:
    """One run of one contender (a variant: pipelining with one micro-batch count)."""
    contender: str                      # a key of CONTENDERS
    model: str
    batch: int = 128
    stages: int = 2
    warmup: int = 2                     # steady steps skipped before the window
    steps: int = 6                      # steps in the window
    threads: int = 1                    # per process
    boundaries: tuple[int, ...] = ()    # the model split (multi-process contenders; pipelining's looped and
                                        # V schedules: 2 x stages pieces, so 2 x stages - 1 cuts)
    microbatches: int = 0               # pipelining
    in_shape: tuple[int, ...] = (3, 32, 32)  # a language model: (context,)
    model_opts: dict = field(default_factory=dict)
    timeout: float = 120.0              # seconds a stage waits on a peer
    malloc: str = "all"                 # all: every process keeps freed memory (engines/malloc.py); shipped:
                                        # only ours (the engine does it itself); none: glibc's defaults

    @property
    def variant(self) -> str:
        name = f"{self.contender}/m{self.microbatches}" if self.microbatches else self.contender
        return name if self.malloc == "all" else f"{name}/malloc-{self.malloc}"

    @property
    def world(self) -> int:
        return 1 if self.contender.startswith("bp_") else self.stages

    @property
    def lm(self) -> bool:
        return is_lm(self.model)

    @property
    def per_sample(self) -> int:
        """Units a sample counts for in the rate: its tokens (a language model) or 1 (an image)."""
        return self.in_shape[0] if self.lm else 1

    @property
    def fill(self) -> int:
        """Ticks before every stage is busy: our engine's pipeline fill (delay 2(K-1) at stage 0)."""
        return 2 * (self.stages - 1) if self.contender in OURS else 0

    @property
    def first(self) -> int:
        """Index of the first step (tick) in the window."""
        return self.fill + self.warmup

    @property
    def num_batches(self) -> int:
        """Batches trained. Our engine: every stage does F and B in ticks 2(K-1) .. N-1, so the window
        (ticks first .. first + steps - 1, ending when tick first + steps begins) is all steady."""
        return self.first + self.steps
