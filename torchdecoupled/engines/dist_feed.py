"""The training data of a distributed run: read once, by rank 0, and sent to whoever needs a part of it.

Rank 0 (replica 0 of stage 0) is the only process that iterates the user's data (a DataLoader, any
iterable of batches, or the zoo's ``Batches``). For each batch b it cuts replica r's slice (contiguous,
``torch.tensor_split``) and sends every other process, on a gloo group of their own, its part:

    (b, n, x, y)   n: the process's slice size (every process: it sizes the activations, dist_plan)
                   x: the inputs, for stage 0's other replicas (and local stages: InfoPro's x0)
                   y: the targets, for the stages with a loss (the last one; local stages)

several batches to a message (up to MAX_GROUP, about GROUP_BYTES): a gloo message costs 0.1-0.2 ms to
post and wait for whatever it holds, which is a tick's worth of a small model.

Rank 0 reads ``lookahead`` batches ahead of its own forward, so a message has always been sent
before a process needs it: a process at tick t needs sizes up to about t + PREFETCH, and rank 0 is at
most K - 1 ticks behind it. A receiver takes messages in order (``drain``) and keeps what it has not
used; a message is a pickled object, as a length and the bytes (no tensor is shared between processes),
each tensor in it as its dtype, shape and raw bytes (``Raw``: torch's own pickling of a tensor costs
30-80 us, a tick's share of a small model's compute).
"""
from __future__ import annotations

import collections
import pickle
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten

from .dist_layout import Layout
from .dist_transport import PeerError, brief, wait_for


def split_slices(tree, parts: int) -> list:
    """``parts`` contiguous slices of every tensor leaf along the batch dimension."""
    if parts == 1:
        return [tree]
    leaves, spec = tree_flatten(tree)
    pieces = [t.tensor_split(parts) if isinstance(t, torch.Tensor) else [t] * parts for t in leaves]
    return [tree_unflatten([p[r] for p in pieces], spec) for r in range(parts)]


def batch_len(tree) -> int:
    leaf = next((v for v in tree_leaves(tree) if isinstance(v, torch.Tensor)), None)
    if leaf is None or leaf.dim() == 0:
        raise ValueError(f"a batch must hold tensors with the batch as their first dimension (got {type(tree).__name__})")
    return leaf.shape[0]


class Raw:
    """A tensor in a data message: dtype, shape, bytes (its contents, in row-major order)."""
    __slots__ = ("dtype", "shape", "data")

    def __init__(self, t: torch.Tensor):
        self.dtype, self.shape = t.dtype, tuple(t.shape)
        self.data = t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()

    def tensor(self) -> torch.Tensor:
        if not self.data:
            return torch.empty(self.shape, dtype=self.dtype)
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8).view(self.dtype).view(self.shape)


def pack(tree):
    """``tree`` with every tensor a ``Raw``, for pickling."""
    return tree_map(lambda v: Raw(v) if isinstance(v, torch.Tensor) else v, tree)


def unpack(tree):
    """``pack``'s inverse: every ``Raw`` a tensor again."""
    return tree_map(lambda v: v.tensor() if isinstance(v, Raw) else v, tree)


MAX_GROUP = 16            # batches per data message at most
GROUP_BYTES = 4 << 20     # and about this many bytes


class DataError(RuntimeError):
    """Reading the user's data raised: the run stops (every process), the message names the batch."""


class Needs:
    """What each rank needs of a batch, from the layout and the method's family."""

    def __init__(self, layout: Layout, local: bool):
        self.layout, self.local = layout, local

    def x(self, rank: int) -> bool:
        k = rank // self.layout.replicas
        return k == 0 or (self.local and k < self.layout.stages - 1)

    def y(self, rank: int) -> bool:
        k = rank // self.layout.replicas
        return k == self.layout.stages - 1 or self.local


class ReaderFeed:
    """Rank 0: reads the data in order, keeps its own slice, sends the others theirs."""

    def __init__(self, data, layout: Layout, needs: Needs, group, num_batches: int, lookahead: int,
                 start: int = 0, timeout: float = 60.0):
        self.data, self.layout, self.needs, self.pg = data, layout, needs, group
        self.num_batches, self.lookahead, self.timeout = num_batches, lookahead, timeout
        self.group: int | None = None  # batches per message, from the first batch's size
        self.per_epoch = data.per_epoch
        self.release = getattr(data, "release_before", None)
        self.mine: dict[int, tuple] = {}
        self.sizes: dict[int, int] = {}
        self.next_b = start
        self.outstanding: collections.deque = collections.deque()
        self.bound = 4 * (lookahead + MAX_GROUP) * layout.world_size  # sends in flight before waiting the oldest
        if start and self.release is not None:
            self.release(start)  # a resumed run: the batches before ``start`` are read past, not kept

    def peek_input(self):
        """Batch ``next_b``'s inputs (this process's slice), read but not sent: the start-up sample."""
        x, _ = self.data.get(min(self.next_b, self.num_batches - 1))
        return split_slices(x, self.layout.replicas)[0]

    def at_tick(self, t: int) -> None:
        """Before tick t: every batch up to t + lookahead is read and sent."""
        self.advance(t)

    def read(self, b: int):
        try:
            x, y = self.data.get(b)
            if self.release is not None:
                self.release(b + 1)
        except Exception as e:
            raise DataError(f"reading batch {b} of the training data (epoch {b // self.per_epoch}, batch "
                             f"{b % self.per_epoch} of it) raised {type(e).__name__}: {e}") from e
        return x, y

    def advance(self, upto: int) -> None:
        """Read and send every batch up to ``upto`` (and ``lookahead`` beyond it, within the run), in
        groups: one message per process for up to ``group`` batches (a message costs ~0.1-0.2 ms on gloo,
        whatever it holds; the group is sized so that a message stays under GROUP_BYTES)."""
        last = min(upto + self.lookahead, self.num_batches - 1)
        while self.next_b <= last:
            parts: dict[int, list] = {rank: [] for rank in range(1, self.layout.world_size)}
            stop = min(self.next_b + (self.group or 1), self.num_batches)
            for b in range(self.next_b, stop):
                for rank, item in self._cut(b).items():
                    parts[rank].append(item)
            self.next_b = stop
            for rank, items in parts.items():
                self._send(rank, items)

    def _cut(self, b: int) -> dict[int, tuple]:
        """Batch b read and cut: this process's slice kept, every other process's part returned."""
        x, y = self.read(b)
        D = self.layout.replicas
        if batch_len(x) < D:
            raise ValueError(f"batch {b} has {batch_len(x)} samples, fewer than the {D} replicas that split it: "
                             f"use batches of at least {D} (drop_last=True drops a short last batch)")
        xs, ys = split_slices(x, D), split_slices(y, D)
        self.mine[b] = (xs[0], ys[0])
        self.sizes[b] = batch_len(xs[0])
        out = {}
        for rank in range(1, self.layout.world_size):
            r = rank % D
            out[rank] = (b, batch_len(xs[r]), pack(xs[r]) if self.needs.x(rank) else None,
                         pack(ys[r]) if self.needs.y(rank) else None)
        if self.group is None:  # sized by the first batch's largest part
            largest = max((len(pickle.dumps(item)) for item in out.values()), default=1)
            self.group = max(1, min(MAX_GROUP, GROUP_BYTES // largest))
        return out

    def _send(self, rank: int, items: list) -> None:
        payload = torch.frombuffer(bytearray(pickle.dumps(items)), dtype=torch.uint8)
        head = torch.tensor([payload.numel()], dtype=torch.int64)
        try:
            self.outstanding.append((dist.isend(head, rank, group=self.pg), head))
            self.outstanding.append((dist.isend(payload, rank, group=self.pg), payload))
            while len(self.outstanding) > self.bound:
                self.outstanding.popleft()[0].wait(timedelta(seconds=self.timeout))
        except RuntimeError as e:
            raise PeerError(f"sending batch {items[0][0]}'s data to rank {rank} failed: {brief(e)}") from e

    def get(self, b: int):
        self.advance(b)
        x, y = self.mine.pop(b)
        return x, y

    def size(self, b: int) -> int:
        self.advance(b)
        return self.sizes[b]

    def close(self) -> None:
        if hasattr(self.data, "close"):
            self.data.close()
        try:
            for work, _ in self.outstanding:
                work.wait(timedelta(seconds=self.timeout))
        except RuntimeError as e:
            raise PeerError(f"delivering the last batches' data failed: {brief(e)}") from e
        self.outstanding.clear()


class RemoteFeed:
    """Every other rank: receives its messages from rank 0, in order, and keeps them until used."""

    def __init__(self, layout: Layout, group, num_batches: int, timeout: float, start: int = 0, lag: int = 0):
        self.layout, self.pg, self.num_batches = layout, group, num_batches
        self.timeout = timedelta(seconds=timeout)
        self.lag = lag  # how far ahead of tick t this process takes its messages (lookahead - (K - 1))
        self.data: dict[int, tuple] = {}
        self.sizes: dict[int, int] = {}
        self.next_b = start

    def _recv(self) -> None:
        head = torch.empty(1, dtype=torch.int64)
        self._wait(dist.irecv(head, 0, group=self.pg))
        payload = torch.empty(int(head), dtype=torch.uint8)
        self._wait(dist.irecv(payload, 0, group=self.pg))
        for b, n, x, y in pickle.loads(payload.numpy().tobytes()):
            assert b == self.next_b, (b, self.next_b)
            self.sizes[b] = n
            if x is not None or y is not None:
                self.data[b] = (unpack(x), unpack(y))
            self.next_b += 1

    def _wait(self, work) -> None:
        wait_for(work, self.timeout, f"waiting for batch {self.next_b}'s data from", "stage 0 (rank 0)",
                 "raise --timeout (timeout=) if reading a batch legitimately takes longer")

    def drain(self, upto: int) -> None:
        while self.next_b <= min(upto, self.num_batches - 1):
            self._recv()

    def at_tick(self, t: int) -> None:
        """Before tick t: take what rank 0 has surely sent by now (it is at most K - 1 ticks behind)."""
        self.drain(t + self.lag)

    def get(self, b: int):
        self.drain(b)
        return self.data.pop(b)

    def size(self, b: int) -> int:
        self.drain(b)
        return self.sizes[b]

    def close(self) -> None:
        pass
