"""Executes one stage's actions against a transport: the same code in the simulator and in a process."""
from __future__ import annotations

from .schedule import Action, Schedule, message_needed, messages_needed, messages_sent, param_needed
from .stage import Stage


class Worker:
    def __init__(self, stage: Stage, schedule: Schedule, batches, transport):
        self.stage, self.schedule, self.batches, self.transport = stage, schedule, batches, transport
        self.needs_labels = stage.is_last or stage.is_local
        self._cache: tuple[int, tuple] | None = None

    def _batch(self, b: int):
        if self._cache is None or self._cache[0] != b:
            self._cache = (b, self.batches.get(b))
        return self._cache[1]

    def ready(self, a: Action) -> bool:
        return all(self.transport.has(key) for key in messages_needed(self.schedule, a))

    def run(self, a: Action) -> None:
        s, b = self.stage, a.batch
        key = message_needed(self.schedule, a)
        if a.op == "F":
            pkey = param_needed(self.schedule, a)
            if pkey is not None:  # MAN: the stage above's first layer, into the head's EMA first
                s.receive_params(self.transport.recv(pkey))
            x0, y = self._batch(b) if (s.index == 0 or self.needs_labels) else (None, None)
            x = x0 if key is None else self.transport.recv(key)
            out = s.forward(b, x, y, x0 if s.is_local else None)
            for m in messages_sent(self.schedule, a):
                self.transport.send(m, out)
        elif a.op == "B":
            g = s.backward(b, None if key is None else self.transport.recv(key))
            for m in messages_sent(self.schedule, a):
                self.transport.send(m, g)
        elif a.op == "U":
            s.update()
            for m in messages_sent(self.schedule, a):  # MAN: the first layer's parameters, down
                self.transport.send(m, s.param_message())
        else:
            raise ValueError(f"unknown op {a.op!r} in {a}")
