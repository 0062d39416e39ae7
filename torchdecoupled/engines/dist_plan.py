"""Which messages travel between two neighbouring stage processes, in which order, with which shapes.

Both ends of a channel derive the same ordered list from the schedule alone: the sender stage's
actions tick by tick (``messages_sent``), and after each evaluation tick the test chunks that replica 0
sends up. Shapes are agreed before any tensor travels: stage k's output has shape
``(n, *feature_shape[k])`` where n is the replica's slice of the batch (or the test chunk), found once by
a one-sample forward of the whole model; a gradient has the shape of the activation it answers.
So a receiver can post its receives early, into buffers of the right size, with no header message.
A run resumed from a checkpoint taken after tick t plans from tick ``start = t + 1``: what was sent up
to tick t and not yet used travels in the checkpoint (``engines/dist_checkpoint.py``).
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..schedule import Schedule, messages_sent

Key = tuple[str, int, int, int]


@torch.no_grad()
def feature_shapes(modules, sample: torch.Tensor) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """(per-sample shape, dtype) of every stage's output: one eval-mode forward of one sample."""
    out, h = [], sample[:1]
    for m in modules:
        was = m.training
        m.eval()
        try:
            h = m(h)
        finally:
            m.train(was)
        out.append((tuple(h.shape[1:]), h.dtype))
    return out


class MessagePlan:
    def __init__(self, schedule: Schedule, evals: dict[int, int], features, batches, replica: int,
                 replicas: int, test_size: int, eval_batch: int, start: int = 0):
        self.schedule, self.evals, self.features, self.start = schedule, evals, features, start
        self.replica, self.replicas = replica, replicas
        self.n, self.bs, self.per_epoch = len(batches.x), batches.batch_size, batches.per_epoch
        self.chunks = [min(eval_batch, test_size - lo) for lo in range(0, test_size, eval_batch)]

    def batch_len(self, b: int) -> int:
        """Samples of batch b (as data.Batches cuts them: the last batch of an epoch may be short)."""
        return min(self.bs, self.n - (b % self.per_epoch) * self.bs)

    def slice_len(self, b: int) -> int:
        """This replica's part of batch b (torch.tensor_split: the first n % D slices get one more)."""
        q, rem = divmod(self.batch_len(b), self.replicas)
        return q + (1 if self.replica < rem else 0)

    def between(self, src: int, dst: int) -> Iterator[Key]:
        """Every message src sends to dst from tick ``start`` on, in the order it sends them."""
        return (key for _, key in self.sent(src, dst))

    def sent(self, src: int, dst: int) -> Iterator[tuple[int, Key]]:
        """``between`` with the tick each message is sent in."""
        s = self.schedule
        for t in range(self.start, s.num_ticks):
            for a in s.actions(t, src):
                for key in messages_sent(s, a):
                    if key[2] == dst:
                        yield t, key
            if t in self.evals and self.replica == 0 and dst == src + 1:
                for i in range(len(self.chunks)):
                    yield t, ("eval", src, dst, self.evals[t] * len(self.chunks) + i)

    def shape(self, key: Key) -> tuple[tuple[int, ...], torch.dtype]:
        kind, src, dst, b = key
        if kind == "eval":
            n, owner = self.chunks[b % len(self.chunks)], src
        else:
            n, owner = self.slice_len(b), (src if kind == "act" else dst)
        feature, dtype = self.features[owner]
        return (n, *feature), dtype
