"""Point-to-point messages between stage processes over torch.distributed (gloo on CPU, NCCL on GPU).

``DistTransport`` has the simulator mailbox's interface (``send(key, tensor)``, ``recv(key)``,
``has(key)``; a key is ``(kind, src_stage, dst_stage, batch)``), so the same ``Worker`` runs on it.
Replica r of stage s lives on rank ``s * D + r`` and only talks to replica r of stages s - 1 and s + 1.

Wire format: every message is a fixed-size int64 header ``[kind, batch, dtype, ndim, *shape]``
followed by the payload, so shapes and dtypes are agreed before a tensor travels (a short last batch
of an epoch just has another shape). Messages from one neighbour arrive in the order they were sent
(one channel per pair of ranks); the header's ``kind`` tells training messages (act, grad) from
evaluation messages (eval) and from the closing ``end``. This needs no tags, which NCCL ignores.

Overlap with compute:

- receiving: one listener thread per neighbour always has a receive posted, so a message lands while
  the stage computes and ``recv`` usually finds it waiting; the listener stops posting while
  ``MAX_PENDING`` messages of that neighbour are unconsumed (back-pressure on a stage that runs ahead);
- sending: ``isend`` returns at once; the Work objects (and tensors) of the last ``MAX_OUTSTANDING``
  messages are kept and the oldest is waited only when the list is full, and all of them at ``close``.

Failures: a neighbour that dies is reported at once by the backend (the listener records the error
and ``recv`` raises ``PeerError``); a neighbour that is alive but silent makes ``recv`` raise
``PeerTimeout`` after ``timeout`` seconds of waiting for one message.
"""
from __future__ import annotations

import collections
import threading
import time
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

Key = tuple[str, int, int, int]
KINDS = ("act", "grad", "eval", "end")
CODES = {k: i for i, k in enumerate(KINDS)}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.uint8, torch.bool)
DTYPE_CODES = {d: i for i, d in enumerate(DTYPES)}
MAX_NDIM = 8
HEADER = 4 + MAX_NDIM
MAX_OUTSTANDING = 16   # sent messages whose completion is not yet waited
MAX_PENDING = 8        # received, unconsumed messages per neighbour before the listener pauses
FOREVER = timedelta(days=365)  # a listener waits for the next message as long as it takes


class PeerError(RuntimeError):
    """A neighbouring stage process died or its connection broke."""


class PeerTimeout(PeerError, TimeoutError):
    """A neighbouring stage process is alive but sent nothing for ``timeout`` seconds."""


class DistTransport:
    def __init__(self, stage: int, replica: int, num_stages: int, replicas: int, *, timeout: float,
                 device: torch.device | str = "cpu",
                 on_wait: Callable[[str, int, int], None] | None = None):
        self.stage, self.replica, self.num_stages, self.replicas = stage, replica, num_stages, replicas
        self.timeout, self.device = float(timeout), torch.device(device)
        self.on_wait = on_wait  # on_wait(what, start_ns, end_ns): time this process spent blocked
        self.box: dict[Key, torch.Tensor] = {}
        self.cond = threading.Condition()
        self.unread = collections.Counter()      # src stage -> received, unconsumed messages
        self.errors: dict[int, BaseException] = {}
        self.closed: set[int] = set()            # neighbours that sent "end"
        self.outstanding: collections.deque = collections.deque()
        self.neighbours = [s for s in (stage - 1, stage + 1) if 0 <= s < num_stages]
        self.listeners = [threading.Thread(target=self._listen, args=(s,), daemon=True,
                                           name=f"recv-from-stage{s}") for s in self.neighbours]
        for t in self.listeners:
            t.start()

    def rank_of(self, stage: int) -> int:
        return stage * self.replicas + self.replica

    def _peer(self, stage: int) -> str:
        return f"stage {stage} (rank {self.rank_of(stage)})"

    # ---- sending ----------------------------------------------------------------------------
    def send(self, key: Key, tensor: torch.Tensor) -> None:
        kind, src, dst, batch = key
        t = tensor.detach()
        if t.device != self.device:
            t = t.to(self.device)
        if not t.is_contiguous():
            t = t.contiguous()
        if t.dim() > MAX_NDIM or t.dtype not in DTYPE_CODES:
            raise ValueError(f"cannot send a {t.dim()}-d {t.dtype} tensor (at most {MAX_NDIM} dimensions, "
                             f"dtypes {', '.join(str(d) for d in DTYPES)})")
        self._post(dst, [CODES[kind], batch, DTYPE_CODES[t.dtype], t.dim(), *t.shape], t, key)

    def _post(self, dst: int, fields: list[int], t: torch.Tensor | None, key) -> None:
        head = torch.zeros(HEADER, dtype=torch.int64)
        head[:len(fields)] = torch.tensor(fields, dtype=torch.int64)
        head = head.to(self.device)
        peer = self.rank_of(dst)
        try:
            works = [dist.isend(head, peer)]
            if t is not None and t.numel():
                works.append(dist.isend(t, peer))
        except RuntimeError as e:
            raise PeerError(f"sending {_what(key)} to {self._peer(dst)} failed: {_short(e)}") from e
        self.outstanding.append((works, head, t, key, dst))
        if len(self.outstanding) > MAX_OUTSTANDING:
            self._complete(self.outstanding.popleft())

    def _complete(self, item) -> None:
        works, _, _, key, dst = item
        t0 = time.perf_counter_ns()
        try:
            for w in works:
                w.wait(timedelta(seconds=self.timeout))
        except RuntimeError as e:
            raise PeerError(f"sending {_what(key)} to {self._peer(dst)} did not complete within "
                            f"{self.timeout:g} s: {_short(e)}") from e
        if self.on_wait is not None:
            self.on_wait(f"send {_what(key)}", t0, time.perf_counter_ns())

    def flush(self) -> None:
        """Wait until every message sent so far has been delivered."""
        while self.outstanding:
            self._complete(self.outstanding.popleft())

    # ---- receiving --------------------------------------------------------------------------
    def _listen(self, src: int) -> None:
        peer = self.rank_of(src)
        try:
            while True:
                head = torch.empty(HEADER, dtype=torch.int64, device=self.device)
                dist.irecv(head, peer).wait(FOREVER)
                kind, batch, code, ndim, *shape = head.tolist()
                if KINDS[kind] == "end":
                    break
                buf = torch.empty(shape[:ndim], dtype=DTYPES[code], device=self.device)
                if buf.numel():
                    dist.irecv(buf, peer).wait(FOREVER)
                with self.cond:
                    while self.unread[src] >= MAX_PENDING:
                        self.cond.wait()
                    self.box[(KINDS[kind], src, self.stage, batch)] = buf
                    self.unread[src] += 1
                    self.cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - reported to the main thread by recv()
            with self.cond:
                self.errors[src] = e
                self.cond.notify_all()
            return
        with self.cond:
            self.closed.add(src)
            self.cond.notify_all()

    def has(self, key: Key) -> bool:
        return key in self.box

    def recv(self, key: Key) -> torch.Tensor:
        src = key[1]
        with self.cond:
            t = self.box.pop(key, None)
            if t is None:
                t = self._wait_for(key)
            self.unread[src] -= 1
            if self.unread[src] == MAX_PENDING - 1:
                self.cond.notify_all()  # a paused listener may go on
        return t

    def _wait_for(self, key: Key) -> torch.Tensor:
        src = key[1]
        t0 = time.perf_counter_ns()
        deadline = time.monotonic() + self.timeout
        while key not in self.box:
            if src in self.errors:
                raise PeerError(f"lost {self._peer(src)} while waiting for {_what(key)}: "
                                f"{_short(self.errors[src])}") from self.errors[src]
            if src in self.closed:
                raise PeerError(f"{self._peer(src)} finished without sending {_what(key)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerTimeout(f"waited {self.timeout:g} s for {_what(key)} from {self._peer(src)}: the peer is "
                                  f"alive but silent (stopped or stuck?); raise --timeout if one tick or one "
                                  f"evaluation legitimately takes longer")
            self.cond.wait(remaining)
        if self.on_wait is not None:
            self.on_wait(f"wait {_what(key)}", t0, time.perf_counter_ns())
        return self.box.pop(key)

    # ---- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Tell the neighbours this process sends nothing more, deliver everything, and wait until the
        neighbours have said the same (raises PeerError / PeerTimeout like recv)."""
        for s in self.neighbours:
            self._post(s, [CODES["end"]], None, ("end", self.stage, s, 0))
        self.flush()
        deadline = time.monotonic() + self.timeout
        with self.cond:
            while not all(s in self.closed or s in self.errors for s in self.neighbours):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    late = [self._peer(s) for s in self.neighbours if s not in self.closed]
                    raise PeerTimeout(f"{', '.join(late)} did not finish within {self.timeout:g} s")
                self.cond.wait(remaining)
            for s in self.neighbours:
                if s in self.errors:
                    raise PeerError(f"lost {self._peer(s)} at the end of the run: {_short(self.errors[s])}")
        if self.box:
            raise RuntimeError(f"messages never used: {sorted(self.box)[:5]}")


def _what(key) -> str:
    kind, _, _, batch = key
    return {"act": f"activation of batch {batch}", "grad": f"gradient of batch {batch}",
            "eval": f"evaluation chunk {batch}"}.get(kind, kind)


def _short(e: BaseException) -> str:
    """The first line of a backend error (gloo's messages run over several lines)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
