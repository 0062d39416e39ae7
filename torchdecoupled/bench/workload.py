"""What every contender trains, the same for all of them: the data (CIFAR-shaped synthetic images, or random
byte tokens for a language model), the model (seed 0), the loss (cross-entropy, or ``lm_loss`` over every
token) and SGD; and the clocks each process reads at the start of every step."""
from __future__ import annotations

import resource
import time

from .jobs import LR, MOMENTUM, SEED, WEIGHT_DECAY, Job

VOCAB = 256  # the text dataset's byte vocabulary (data/text.py)


def clock() -> tuple[int, int, int, int]:
    """(wall ns, this process's CPU ns, this thread's CPU ns, this process's minor page faults)."""
    return (time.perf_counter_ns(), time.process_time_ns(), time.thread_time_ns(),
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_tokens(seed: int, context: int, n_train: int, n_test: int):
    """A ``TextData`` of uniformly random byte tokens: inputs and next-token targets of shape (n, context),
    as ``load_text`` lays them out (targets = inputs shifted by one). Nothing to learn: for speed runs."""
    import torch
    from ..data.text import TextData

    g = torch.Generator().manual_seed(seed)
    train = torch.randint(VOCAB, (n_train, context + 1), generator=g)
    test = torch.randint(VOCAB, (n_test, context + 1), generator=g)
    return TextData(train_x=train[:, :-1].contiguous(), train_y=train[:, 1:].contiguous(),
                    test_x=test[:, :-1].contiguous(), test_y=test[:, 1:].contiguous(), in_shape=(context,),
                    source={"name": "random tokens", "bytes": n_train * (context + 1)})


def data(job: Job):
    """The job's data: ``num_batches`` training batches and one test batch."""
    n_train = job.num_batches * job.batch
    if job.lm:
        return random_tokens(SEED, job.in_shape[0], n_train, job.batch)
    from ..data.synthetic import load_synthetic
    return load_synthetic(seed=SEED, in_shape=job.in_shape, n_train=n_train, n_test=job.batch)


def batches(job: Job, dataset):
    from ..data.batches import Batches
    return Batches(dataset.train_x, dataset.train_y, job.batch, SEED)


def model(job: Job, num_classes: int):
    import torch
    from ..models import build_model
    torch.manual_seed(SEED)  # as build_run does
    return build_model(job.model, num_classes, job.in_shape, **job.model_opts)


def loss_fn(job: Job):
    """The criterion: mean next-token cross-entropy (``lm_loss``) for a language model, else cross-entropy."""
    import torch
    from ..models import lm_loss
    return lm_loss if job.lm else torch.nn.functional.cross_entropy


def sgd(params):
    import torch
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
