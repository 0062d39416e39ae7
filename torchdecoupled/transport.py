"""Moving activations up and gradients down. A message key is ``(kind, src, dst, batch)``.

``LocalTransport`` is the simulator's in-memory mailbox; the torch.distributed transport lives in
``engines/dist_transport.py`` (only the distributed engine imports torch.distributed).
"""
from __future__ import annotations

import torch

Key = tuple[str, int, int, int]


class LocalTransport:
    """In-memory mailboxes keyed by message: the order in which stages run inside a tick cannot matter."""

    def __init__(self):
        self.box: dict[Key, torch.Tensor] = {}

    def send(self, key: Key, tensor: torch.Tensor) -> None:
        if key in self.box:
            raise RuntimeError(f"message {key} sent twice")
        self.box[key] = tensor

    def has(self, key: Key) -> bool:
        return key in self.box

    def recv(self, key: Key) -> torch.Tensor:
        return self.box.pop(key)

    def pending(self) -> list[Key]:
        return sorted(self.box)
