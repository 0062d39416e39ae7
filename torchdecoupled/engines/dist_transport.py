"""Point-to-point messages between stage processes over torch.distributed (gloo on CPU, NCCL on GPU).

``DistTransport`` has the simulator mailbox's interface (``send(key, tensor)``, ``recv(key)``,
``has(key)``; a key is ``(kind, src_stage, dst_stage, batch)``), so the same ``Worker`` runs on it.
Replica r of stage s lives on rank ``s * D + r`` and only talks to replica r of stages s - 1 and s + 1.

Shapes and order are agreed before any tensor travels (``dist_plan.MessagePlan``): both ends derive
the ordered list of messages on a channel, with their shapes, from the schedule. Messages on one
channel are matched in the order they are posted (gloo and NCCL alike), so a message is its payload
alone; training messages (act, grad) and evaluation messages (eval) share the channel in the one
order both ends know, no tags needed (NCCL ignores tags).

Overlap with compute, all in the calling thread (no GIL hand-offs, no polling):

- receiving: ``PREFETCH`` receives per neighbour are posted ahead into buffers of the agreed shapes,
  so a message lands while the stage computes and ``recv`` usually just collects it;
- sending: ``isend`` returns at once; the Work objects (and tensors) of the last ``MAX_OUTSTANDING``
  messages are kept and the oldest is waited only when the list is full, and all of them at ``close``.

Checkpoints (``dist_checkpoint``): ``unconsumed(t)`` receives every message sent up to tick t and not
used yet; a resumed run starts with those as ``received`` and plans the rest from tick t + 1.

Failures: a neighbour that dies is reported by the backend at once (``PeerError``); one that is alive
but silent makes the wait fail after ``timeout`` seconds (``PeerTimeout``).
"""
from __future__ import annotations

import collections
import re
import time
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from .dist_plan import Key, MessagePlan

# Both windows are kept small on purpose: every message held here is a whole batch's activation or
# gradient kept alive. With 4 and 16 a ResNet-20 stage (one 8 MiB message a tick) held 128 MiB more,
# and its heap grew, with 3,000-5,000 page faults a tick, for its first 16-28 ticks (docs/faults.md).
# A send two messages old has always had its receive posted (receives are posted in channel order),
# so waiting on it does not stall: 0.01-0.02 ms per tick blocked on sends (docs/speed_details.json).
PREFETCH = 2           # receives posted ahead per neighbour (gloo; NCCL: 0, see DistTransport)
MAX_OUTSTANDING = 2    # sent messages whose completion is not yet waited


class PeerError(RuntimeError):
    """A neighbouring stage process died, its connection broke, or it stayed silent (PeerTimeout)."""


class PeerTimeout(PeerError, TimeoutError):
    """A neighbouring stage process is alive but sent nothing for ``timeout`` seconds."""


class _Posted:
    """One message on its way in: ``work`` is its pending receive (None once received)."""
    __slots__ = ("key", "tick", "bufs", "works")

    def __init__(self, key: Key, tick: int, bufs: list[torch.Tensor], works: list):
        self.key, self.tick, self.bufs, self.works = key, tick, bufs, works


class _Inbox:
    """The receives posted ahead on one channel, in the channel's agreed order."""

    def __init__(self, plan: MessagePlan, src: int, dst: int, peer: int, device: torch.device, prefetch: int,
                 received: dict[Key, torch.Tensor]):
        self.plan, self.peer, self.device, self.prefetch = plan, peer, device, prefetch
        self.expected = plan.sent(src, dst)  # (tick, key) from tick plan.start on
        self.ahead = next(self.expected, None)
        # restored from a checkpoint: sent before plan.start, not used yet
        self.posted: collections.deque = collections.deque(
            _Posted(key, plan.start - 1, [t.to(device) for t in plan.flatten(key, tree)], [])
            for key, tree in received.items())
        self.fill()

    def _post_next(self) -> bool:
        if self.ahead is None:
            return False
        tick, key = self.ahead
        self.ahead = next(self.expected, None)
        bufs = [torch.empty(shape, dtype=dtype, device=self.device) for shape, dtype in self.plan.shapes(key)]
        works = [dist.irecv(buf, self.peer) for buf in bufs if buf.numel()]
        self.posted.append(_Posted(key, tick, bufs, works))
        return True

    def fill(self, until: Key | None = None) -> None:
        """Keep ``prefetch`` receives posted (more if ``until`` is not posted yet)."""
        while len(self.posted) < self.prefetch or (until is not None and all(p.key != until for p in self.posted)):
            if not self._post_next():
                return

    def take(self, key: Key) -> _Posted | None:
        """The posted receive of ``key``: messages are consumed in another order than they travel (an
        activation sent in tick t is used in tick t + 1, after the evaluation that follows tick t)."""
        for i, p in enumerate(self.posted):
            if p.key == key:
                del self.posted[i]
                return p
        self.fill(until=key)
        if not self.posted or self.posted[-1].key != key:
            return None
        return self.posted.pop()

    def sent_until(self, tick: int) -> list[_Posted]:
        """Post the receives of every message sent up to ``tick``; returns those not taken yet."""
        while self.ahead is not None and self.ahead[0] <= tick:
            self._post_next()
        return [p for p in self.posted if p.tick <= tick]

    def left(self) -> list[Key]:
        """Every message of the plan not taken yet."""
        ahead = [self.ahead[1]] if self.ahead is not None else []
        return [p.key for p in self.posted] + ahead + [key for _, key in self.expected]


class DistTransport:
    def __init__(self, plan: MessagePlan, stage: int, replica: int, num_stages: int, replicas: int, *,
                 timeout: float, device: torch.device | str = "cpu",
                 on_wait: Callable[[str, int, int], None] | None = None,
                 received: dict[Key, torch.Tensor] | None = None):
        self.plan, self.stage, self.replica, self.replicas = plan, stage, replica, replicas
        self.timeout, self.device = timedelta(seconds=timeout), torch.device(device)
        self.on_wait = on_wait  # on_wait(what, start_ns, end_ns): time this process spent blocked
        self.outstanding: collections.deque = collections.deque()
        # NCCL runs a pair's sends and receives on one stream in posting order: a receive posted early
        # would hold back this rank's sends behind it, so there receives are posted when needed.
        prefetch = 0 if self.device.type == "cuda" else PREFETCH
        neighbours = [s for s in (stage - 1, stage + 1) if 0 <= s < num_stages]
        received = received or {}
        self.inbox = {s: _Inbox(plan, s, stage, self.rank_of(s), self.device, prefetch,
                                {key: t for key, t in received.items() if key[1] == s}) for s in neighbours}

    def rank_of(self, stage: int) -> int:
        return stage * self.replicas + self.replica

    def _peer(self, stage: int) -> str:
        return f"stage {stage} (rank {self.rank_of(stage)})"

    # ---- sending ----------------------------------------------------------------------------
    def send(self, key: Key, tree) -> None:
        """Send what the stage produced: a tensor, or a tuple/dict of them (the agreed structure)."""
        tensors = []
        for t, (shape, dtype) in zip(self.plan.flatten(key, tree), self.plan.shapes(key)):
            t = t.detach()
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise RuntimeError(f"{_what(key)} has shape {tuple(t.shape)} and dtype {t.dtype}, but the shape "
                                   f"agreed at start is {shape} {dtype}: the distributed engine needs stage outputs "
                                   f"of shape (batch, *fixed) with a fixed dtype")
            if t.device != self.device:
                t = t.to(self.device)
            tensors.append(t if t.is_contiguous() else t.contiguous())
        dst = key[2]
        try:
            works = [dist.isend(t, self.rank_of(dst)) for t in tensors if t.numel()]
        except RuntimeError as e:
            raise PeerError(f"sending {_what(key)} to {self._peer(dst)} failed: {brief(e)}") from e
        self.outstanding.append((works, tensors, key))
        if len(self.outstanding) > MAX_OUTSTANDING:
            self._complete(*self.outstanding.popleft())

    def _complete(self, works, tensors, key) -> None:
        for work in works:
            self._wait(work, f"send {_what(key)}", f"sending {_what(key)} to", key[2])

    def flush(self) -> None:
        """Wait until every message sent so far has been delivered."""
        while self.outstanding:
            self._complete(*self.outstanding.popleft())

    # ---- receiving --------------------------------------------------------------------------
    def has(self, key: Key) -> bool:
        return True  # recv blocks until the message is there

    def recv(self, key: Key):
        src = key[1]
        box = self.inbox[src]
        p = box.take(key)
        if p is None:
            raise RuntimeError(f"stage {self.stage} asked for {key}, which stage {src} never sends")
        self._arrive(p, src)
        box.fill()
        return self.plan.unflatten(key, p.bufs)

    def _arrive(self, p: _Posted, src: int) -> None:
        for work in p.works:
            self._wait(work, f"wait {_what(p.key)}", f"waiting for {_what(p.key)} from", src)
        p.works = []

    def unconsumed(self, tick: int) -> dict[Key, torch.Tensor]:
        """Every message sent to this stage up to ``tick`` and not used yet, received now, for a checkpoint
        after tick t: each was sent in tick t or before, so no wait here depends on what a peer does next.
        They stay where ``recv`` finds them."""
        out = {}
        for src, box in self.inbox.items():
            for p in box.sent_until(tick):
                self._arrive(p, src)
                out[p.key] = self.plan.unflatten(p.key, p.bufs)
        return out

    def _wait(self, work, label: str, doing: str, peer: int) -> None:
        t0 = time.perf_counter_ns()
        wait_for(work, self.timeout, doing, self._peer(peer), "the peer is alive but silent (stopped or stuck?); "
                 "raise --timeout (timeout=) if one tick or one evaluation legitimately takes longer")
        if self.on_wait is not None:
            self.on_wait(label, t0, time.perf_counter_ns())

    # ---- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Deliver everything sent; every agreed message must have been received."""
        self.flush()
        left = {s: box.left() for s, box in self.inbox.items()}
        left = {s: keys[:5] for s, keys in left.items() if keys}
        if left:
            raise RuntimeError(f"stage {self.stage}: messages never used: {left}")


def wait_for(work, timeout: timedelta, doing: str, peer: str, hint: str) -> None:
    """Wait for a send or receive; a dead peer is a PeerError, a silent one past ``timeout`` a PeerTimeout."""
    try:
        work.wait(timeout)
    except RuntimeError as e:
        if "timed out" in str(e).lower():
            raise PeerTimeout(f"{doing} {peer}: nothing for {timeout.total_seconds():g} s; {hint}") from e
        raise PeerError(f"lost {peer} while {doing} it: {brief(e)}") from e


def _what(key) -> str:
    kind, _, _, batch = key
    return {"act": f"activation of batch {batch}", "grad": f"gradient of batch {batch}",
            "eval": f"evaluation chunk {batch}",
            "param": f"first-layer parameters after the update of batch {batch}"}.get(kind, kind)


def brief(e: BaseException) -> str:
    """The first sentence of a backend error, without gloo's source location."""
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|py):\d+\]\s*", "", str(e).strip())
    text = re.split(r"(?<=\.) |\n", text, maxsplit=1)[0]
    return f"{type(e).__name__}: {text}"
