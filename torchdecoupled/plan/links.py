"""Links between stages: a message of n bytes takes ``latency + n / bandwidth`` seconds.

Presets (one direction; nominal figures, not measurements, except ``gloo-local``):

    gloo-local   this machine's gloo over TCP on 127.0.0.1: ~45 us per message, ~4.5 GB/s (measured by the
                 distributed engine's transport on the 2-core development VM)
    pcie         PCIe 4.0 x16 between GPUs of one host: 10 us, 25 GB/s (of 32 GB/s raw)
    nvlink       NVLink 3 (A100-class) between GPUs of one host: 5 us, 150 GB/s
    10gbe        10 Gigabit Ethernet between hosts, TCP: 30 us, 1.1 GB/s
    100gbe       100 Gigabit Ethernet / RDMA between hosts: 10 us, 11 GB/s

Host CPU per byte (``cpu_per_byte``): a transport that copies through the host's CPU (gloo over TCP) takes CPU
time at both ends of every message, out of the stages' compute when the processes share the cores. Only
``gloo-local`` has it: 0.25 ns per byte at each end, measured on the development VM with two processes passing
1 to 8 MiB tensors (main thread and gloo's threads together: 0.29 to 0.37 ns per byte to send, 0.16 to 0.28 to
receive; 8 MiB cost 2.0 to 2.4 ms to send and 1.2 to 1.3 ms to receive; benchmarks/plan_validate.py ``--probe``). Device links (NCCL over PCIe or NVLink, RDMA) copy without the CPU: 0.

Or numbers: ``"BW,LAT"``, bandwidth in GB/s (1e9 bytes/s) and latency in microseconds, e.g. ``"25,10"``
(no host CPU per byte).
The ring all-reduce of D replicas (Patarasuk & Yuan 2009) over the same link:
``2 (D-1)/D * n / bandwidth + 2 (D-1) * latency``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth: float   # bytes per second
    latency: float     # seconds per message
    cpu_per_byte: float = 0.0  # host CPU seconds per byte at each end (transports that copy through the CPU)

    def seconds(self, nbytes: float) -> float:
        return self.latency + nbytes / self.bandwidth

    @staticmethod
    def ring_bytes(nbytes: float, replicas: int) -> float:
        """Bytes each process sends (and receives) in a ring all-reduce of nbytes."""
        return 2 * (replicas - 1) / replicas * nbytes if replicas > 1 else 0.0

    def allreduce(self, nbytes: float, replicas: int) -> float:
        """Ring all-reduce of nbytes among ``replicas`` processes (0 for one)."""
        if replicas <= 1:
            return 0.0
        return self.ring_bytes(nbytes, replicas) / self.bandwidth + 2 * (replicas - 1) * self.latency

    def describe(self) -> str:
        cpu = f", {self.cpu_per_byte * 1e9:g} ns of CPU per byte at each end" if self.cpu_per_byte else ""
        return f"{self.name} ({self.latency * 1e6:g} us, {self.bandwidth / 1e9:g} GB/s{cpu})"


LINKS = {
    "gloo-local": Link("gloo-local", 4.5e9, 45e-6, 0.25e-9),
    "pcie": Link("pcie", 25e9, 10e-6),
    "nvlink": Link("nvlink", 150e9, 5e-6),
    "10gbe": Link("10gbe", 1.1e9, 30e-6),
    "100gbe": Link("100gbe", 11e9, 10e-6),
}


def get_link(spec: "str | Link") -> Link:
    """A preset by name, a Link as is, or ``"BW,LAT"`` (GB/s, microseconds)."""
    if isinstance(spec, Link):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"link must be a preset name, 'BW,LAT' or a Link (got {type(spec).__name__})")
    if spec in LINKS:
        return LINKS[spec]
    hint = f"valid: {', '.join(LINKS)}, or BW,LAT in GB/s and microseconds such as 25,10"
    parts = spec.split(",")
    if len(parts) != 2:
        raise ValueError(f"unknown link {spec!r} ({hint})")
    try:
        bw, lat = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"unknown link {spec!r} ({hint})") from None
    if not (bw > 0 and lat >= 0 and bw < float("inf") and lat < float("inf")):
        raise ValueError(f"link {spec!r}: bandwidth must be > 0 and latency >= 0 ({hint})")
    return Link(spec, bw * 1e9, lat / 1e6)
