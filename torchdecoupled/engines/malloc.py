"""Keep freed memory in a stage process for reuse, so the steady state takes no page faults (glibc).

A training step allocates and frees the same large activation buffers every tick. With glibc's default
settings, blocks above a (dynamic) threshold are ``mmap``-ed and unmapped again on free, and free memory
at the top of the heap beyond a trim threshold goes back to the system; the next tick then takes the
pages again, one page fault (and a page of zeroing) per 4 KiB. A decoupled stage holds several batches
in flight, so its memory rises and falls by whole batches every tick: measured on ResNet-20, batch 128,
K = 2 (docs/speed.md), each FDG stage process took 10,000 to 17,000 page faults per tick (40 to 70 MiB,
some 25 to 40 ms of a 330 ms tick); a plain BP step, depending on where glibc's dynamic threshold has
settled, from a few hundred to 50,000.

``keep_freed_memory()`` sets ``M_MMAP_THRESHOLD`` to glibc's largest value (32 MiB; larger blocks still
come from ``mmap``) and ``M_TRIM_THRESHOLD`` to 1 GiB, so freed memory stays in the process, much as a
caching allocator keeps it: the resident size stays at the peak the run reaches anyway. After that
the heap still grows for a few ticks: glibc carves small C++ allocations out of a just-freed 8 MiB
block, which then no longer fits the next activation (ResNet-20, K = 2: stage 0's last tick with more
than 1,000 faults is tick 7 to 11). It used to grow until tick 16 to 28, because the transport kept its
last 16 sent messages (8 MiB each) alive; it now keeps 2 (``dist_transport``), which also lowered the
stage processes' peak RSS by 60 to 250 MB (``benchmarks/faults.py``, docs/faults.md). Results do not
change (only addresses). Set ``TORCHDECOUPLED_KEEP_MEMORY=0`` to keep glibc's defaults. Elsewhere (not
Linux/glibc) it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

ENV = "TORCHDECOUPLED_KEEP_MEMORY"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20                      # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Apply the settings; returns whether they took effect."""
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
