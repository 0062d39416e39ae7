"""A checkpoint on disk: written atomically, sealed with a SHA-256, read without running code.

``seal`` adds ``"sha256"`` to a state dict: the hash, in a fixed order, of its structure (keys, lengths,
the numbers and strings in it, each tensor's dtype and shape) and of every tensor's bytes. ``save`` writes
an object with ``torch.save`` to ``path + ".tmp"``, syncs it and renames it over ``path``: a crash while
writing leaves the previous file, and an exception removes the temporary one. ``load`` reads with
``weights_only=True`` (tensors, dicts, lists, tuples, numbers, strings, None: a pickle that would call a
function is refused, not run) and memory-mapped; ``verify`` recomputes the hash, before anything is
restored from it, which reads every tensor once (each process reading a checkpoint reads the whole file).
A file that cannot be read is refused with a ValueError of one line naming it and what is wrong with it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import threading

import torch

KEY = "sha256"
_LEAVES = (type(None), bool, int, float, str, bytes, torch.dtype, torch.device)
_DAMAGED = "it is damaged (truncated or overwritten) or not a checkpoint: resume from another run directory, or " \
           "start afresh without --resume"


def digest(obj) -> str:
    """The SHA-256 of ``obj`` (nested dicts, lists and tuples of tensors and ``_LEAVES``), as hex."""
    h = hashlib.sha256()
    _feed(h, obj, "state")
    return h.hexdigest()


def _feed(h, obj, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k, v in obj.items():
            _feed(h, k, f"{where} key")
            _feed(h, v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}[{i}]")
    elif isinstance(obj, _LEAVES):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:  # torch.load(weights_only=True) could not read it back
        raise TypeError(f"{where} is a {type(obj).__qualname__} ({obj!r}); a checkpoint holds tensors, dicts, lists, "
                        f"tuples, numbers, strings and None only: store it as one of those")


def seal(state: dict) -> dict:
    """``state`` with its ``digest`` under ``KEY``."""
    return {**state, KEY: digest(state)}


def verify(state: dict, path: str) -> dict:
    """``state`` without ``KEY``, if it matches the digest of the rest; else a ValueError."""
    rest = {k: v for k, v in state.items() if k != KEY}
    if digest(rest) != state.get(KEY):  # no KEY at all: altered too
        raise ValueError(f"checkpoint {path!r} fails its SHA-256 check (its content changed after it was written): "
                         f"{_DAMAGED}")
    return rest


@contextlib.contextmanager
def _sigint_after():
    """Hold a SIGINT (Ctrl-C) that arrives inside the block until it ends: a KeyboardInterrupt inside torch.save
    would leave torch's zip writer half-closed and raise its own RuntimeError instead. Only in the main thread,
    and only where SIGINT has a Python handler (ignored stays ignored)."""
    old = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not callable(old):
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda sig, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if held:
        old(signal.SIGINT, held[0])  # the default handler raises KeyboardInterrupt: after the file is whole


def save(path: str, obj) -> None:
    """``torch.save(obj)`` to ``path``, atomically; on any exception no ``path + ".tmp"`` is left behind; a
    Ctrl-C while writing takes effect once the file is written and renamed."""
    tmp = path + ".tmp"
    try:
        with _sigint_after():
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:  # a KeyboardInterrupt too: the previous file stays, the partial one goes
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: str, map_location=None):
    """What ``path`` holds, read with ``weights_only=True``, memory-mapped; a ValueError if it cannot be."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"checkpoint {path!r} is empty: {_DAMAGED}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 (any reader failure: a file from outside, reported in one line)
        if "WeightsUnpickler error" in str(e):
            what = re.search(r"WeightsUnpickler error: (.*?)(?: Please|$)", str(e), re.M).group(1)
            raise ValueError(f"checkpoint {path!r} holds more than tensors, numbers and strings ({what}): refused, "
                             f"nothing in it was run; a checkpoint written by torchdecoupled never does, so this one "
                             f"was made or altered elsewhere: do not load it with weights_only=False") from e
        raise ValueError(f"checkpoint {path!r} cannot be read ({type(e).__name__}): {_DAMAGED}") from e
