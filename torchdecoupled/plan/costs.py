"""Per-layer costs for the planner: forward, backward and update seconds, and the bytes a stage stores.

Measured here (``measure``), as ``layer_time.layer_costs`` times them (a training-like pass: forward
through every layer keeping its graph, then the backward layer by layer in reverse; the median of
``repeats`` after a warm-up; on a GPU the device is synchronised around every layer), with one thread;
or read from a JSON cost file measured on another machine (``load``; ``benchmarks/gpu_check.py --costs``
writes one on a GPU). The file format, ``"format": "torchdecoupled-costs/1"``::

    {"format": "torchdecoupled-costs/1", "device": "cpu", "batch": 128, "model": "resnet20",
     "input_bytes": 1572864,            # the network input of one batch (stage 0's stored input)
     "loss_bytes": 5632,                # what the criterion saves for backward (last stage)
     "layers": [{"name": "0", "type": "Sequential",
                 "forward_s": 0.011, "backward_s": 0.021, "update_s": 0.0001,
                 "param_bytes": 1856, "trainable_bytes": 1856,
                 "out_bytes": 8388608,       # the layer's output: the message sent up (and its gradient down)
                 "saved_bytes": 16777216,    # what autograd saves for the layer, its input and output left out
                 "saves_input": true, "saves_output": false}, ...]}

A stage's stored activations (one batch, as ``Stage.telemetry`` counts them: distinct storages autograd
saves, plus the output) are ``stage_saved_bytes``. Times and activation bytes scale linearly with the
batch (``at_batch``), parameter bytes do not.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from ..stage import saved_bytes

FORMAT = "torchdecoupled-costs/1"
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
LAYER_KEYS = ("forward_s", "backward_s", "update_s", "param_bytes", "trainable_bytes", "out_bytes", "saved_bytes")


@dataclass(frozen=True)
class LayerCost:
    name: str
    type: str
    forward_s: float
    backward_s: float
    update_s: float
    param_bytes: int
    trainable_bytes: int
    out_bytes: int
    saved_bytes: int
    saves_input: bool
    saves_output: bool


@dataclass(frozen=True)
class Costs:
    layers: list[LayerCost]
    batch: int
    input_bytes: int
    loss_bytes: int = 0
    device: str = "cpu"
    model: str = ""
    note: str = ""
    heads: dict = field(default_factory=dict)   # head name -> per layer {forward_s, backward_s, saved_bytes, ...}

    def at_batch(self, batch: int) -> "Costs":
        """The same costs for another batch size: times and activation bytes scaled linearly."""
        if batch == self.batch:
            return self
        r = batch / self.batch
        layers = [replace(c, forward_s=c.forward_s * r, backward_s=c.backward_s * r, out_bytes=round(c.out_bytes * r),
                          saved_bytes=round(c.saved_bytes * r)) for c in self.layers]
        heads = {n: [{**h, "forward_s": h["forward_s"] * r, "backward_s": h["backward_s"] * r,
                      "saved_bytes": round(h["saved_bytes"] * r)} for h in hs] for n, hs in self.heads.items()}
        note = (self.note + "; " if self.note else "") + f"scaled linearly from batch {self.batch} to {batch}"
        return replace(self, layers=layers, batch=batch, input_bytes=round(self.input_bytes * r),
                       loss_bytes=round(self.loss_bytes * r), heads=heads, note=note)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "device": self.device, "batch": self.batch, "model": self.model,
                "note": self.note, "input_bytes": self.input_bytes, "loss_bytes": self.loss_bytes,
                "layers": [asdict(c) for c in self.layers], "heads": self.heads}


def stage_saved_bytes(costs: Costs, a: int, b: int, last: bool = False) -> int:
    """Bytes a stage holding layers[a:b] stores for one batch with its graph (Stage.telemetry's count):
    what its layers save, each boundary tensor inside once, its input if its first layer saves it, its
    output; at the last stage also what the criterion saves."""
    L = costs.layers
    total = sum(c.saved_bytes for c in L[a:b])
    inner = sum(L[i].out_bytes for i in range(a, b - 1) if L[i].saves_output or L[i + 1].saves_input)
    first = (L[a - 1].out_bytes if a else costs.input_bytes) if L[a].saves_input else 0
    return total + inner + first + L[b - 1].out_bytes + (costs.loss_bytes if last else 0)


def stage_input_bytes(costs: Costs, a: int) -> int:
    return costs.layers[a - 1].out_bytes if a else costs.input_bytes


# ---- measuring --------------------------------------------------------------------------------------

def _sync(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def measure(model: nn.Sequential, sample: torch.Tensor, target: torch.Tensor | None = None, *, repeats: int = 3,
            threads: int | None = 1, model_name: str = "", calibrate: bool = True, clock: str = "wall") -> Costs:
    """Measure every child of ``model`` on ``sample`` (one batch): times (median of ``repeats``), bytes.

    ``threads=1`` (the planner's default) times as one stage process of the distributed engine runs.
    ``calibrate``: also time whole training steps (forward, loss, backward, SGD step, on a copy of the
    model) and scale every layer's times so that they add up to it: layers timed one by one miss what a
    step spends between them (the loss, allocations, caches), 10 to 25 % on this machine's CPU.
    ``clock="cpu"`` times with this thread's CPU time (CPU only): on a loaded machine it counts the work, not
    the waiting for a core.
    BatchNorm statistics, ``.grad`` and the CPU random state are left as they were."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1 (got {repeats!r})")
    if clock not in CLOCKS or (clock == "cpu" and sample.device.type != "cpu"):
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)} ('cpu' on a CPU only), got {clock!r}")
    timer = CLOCKS[clock]
    layers = list(model)
    device = sample.device
    old_threads = torch.get_num_threads()
    saved_state = [[b.detach().clone() for b in m.buffers()] for m in layers]
    try:
        if threads:
            torch.set_num_threads(threads)
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            times = _time_passes(layers, sample, repeats, _sync(device), timer)
            sizes = _bytes(layers, sample, target)
            upd = [_update_seconds(m, repeats, _sync(device), timer) for m in layers]
            step = _step_seconds(model, sample, target, repeats, _sync(device), timer) if calibrate else 0.0
    finally:
        torch.set_num_threads(old_threads)
        with torch.no_grad():
            for m, old in zip(layers, saved_state):
                for buf, value in zip(m.buffers(), old):
                    buf.copy_(value)
    names = list(model._modules) if isinstance(model, nn.Sequential) else [str(i) for i in range(len(layers))]
    out = [LayerCost(n, type(m).__name__, f, b, u, **s) for n, m, (f, b), u, s in zip(names, layers, times, upd, sizes[0])]
    note = f"measured ({clock} clock) with {threads or old_threads} thread(s), median of {repeats}"
    if calibrate:
        factor = step / sum(c.forward_s + c.backward_s + c.update_s for c in out)
        out = [replace(c, forward_s=c.forward_s * factor, backward_s=c.backward_s * factor,
                       update_s=c.update_s * factor) for c in out]
        note += f", scaled by {factor:.3f} to a whole training step's {step * 1e3:.1f} ms"
    return Costs(out, int(sample.shape[0]), int(sample.nbytes), sizes[1], str(device), model_name, note)


def _time_passes(layers, sample, repeats, sync, timer) -> list[tuple[float, float]]:
    fwd, bwd = [[] for _ in layers], [[] for _ in layers]
    for r in range(repeats + 1):  # r == 0 warms up
        inputs, outputs, x = [], [], sample
        for i, m in enumerate(layers):
            inp = x.detach().requires_grad_(i > 0 and x.is_floating_point())
            sync()
            t0 = timer()
            y = m(inp)
            sync()
            if r:
                fwd[i].append(timer() - t0)
            inputs.append(inp)
            outputs.append(y)
            x = y
        grad = None
        for i in reversed(range(len(layers))):
            inp, y = inputs.pop(), outputs.pop()
            wrt = ([inp] if inp.requires_grad else []) + [p for p in layers[i].parameters() if p.requires_grad]
            if grad is None or grad.shape != y.shape:
                grad = torch.ones_like(y)
            sync()
            t0 = timer()
            got = torch.autograd.grad(y, wrt, grad, allow_unused=True) if wrt and y.requires_grad else None
            sync()
            if r:
                bwd[i].append(timer() - t0)
            grad = got[0] if got is not None and inp.requires_grad else None
    return [(statistics.median(f), statistics.median(b)) for f, b in zip(fwd, bwd)]


def _bytes(layers, sample, target) -> tuple[list[dict], int]:
    """Per layer: parameter bytes, output bytes, and what autograd saves (own, input, output); the loss's."""
    rows, keep, x = [], [], sample
    for i, m in enumerate(layers):
        params = list(m.parameters())
        inp = x.detach().requires_grad_(i > 0 and x.is_floating_point())
        with saved_bytes(params) as saved:
            y = m(inp)
        keep.append((inp, y))
        ip, op = inp.untyped_storage().data_ptr(), y.untyped_storage().data_ptr()
        rows.append({"param_bytes": sum(p.nbytes for p in params),
                     "trainable_bytes": sum(p.nbytes for p in params if p.requires_grad),
                     "out_bytes": int(y.nbytes), "saved_bytes": sum(v for p, v in saved.items() if p not in (ip, op)),
                     "saves_input": ip in saved, "saves_output": op in saved})
        x = y
    loss = 0
    if target is not None:
        with saved_bytes([]) as saved:
            nn.functional.cross_entropy(x, target)
        loss = sum(v for p, v in saved.items() if p != x.untyped_storage().data_ptr())
    return rows, loss


def _step_seconds(model, sample, target, repeats, sync, timer) -> float:
    """Median seconds of a whole training step (forward, loss, backward, SGD step) on a copy of ``model``."""
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    times = []
    for r in range(repeats + 1):
        sync()
        t0 = timer()
        out = net(sample)
        loss = nn.functional.cross_entropy(out, target) if target is not None else out.float().sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if r:
            times.append(timer() - t0)
    return statistics.median(times)


def _update_seconds(module: nn.Module, repeats: int, sync, timer) -> float:
    """Median seconds of one SGD step (momentum 0.9, weight decay, as the benchmarks train) on the layer's
    trainable parameters, on copies of them."""
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters() if p.requires_grad]
    if not params:
        return 0.0
    for p in params:
        p.grad = torch.ones_like(p)
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)
    times = []
    for r in range(repeats + 1):
        sync()
        t0 = timer()
        opt.step()
        sync()
        if r:
            times.append(timer() - t0)
    return statistics.median(times)


# ---- files ------------------------------------------------------------------------------------------

def save(costs: Costs, path: str) -> str:
    with open(path, "w") as f:
        json.dump(costs.to_dict(), f, indent=1)
    return path


def load(path: str) -> Costs:
    """Read a cost file (format above); a missing or malformed file is a one-line error naming it."""
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"cost file {path!r} not found: write one with `torchdecoupled plan ... "
                                f"--save-costs FILE` or benchmarks/gpu_check.py --costs FILE") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cost file {path!r} is not JSON ({type(e).__name__}: {e}); see "
                         f"torchdecoupled/plan/costs.py for the format") from None
    return from_dict(d, path)


def from_dict(d, where: str = "cost file") -> Costs:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{where} is not a cost file (format {got!r}, want {FORMAT!r}); see "
                         f"torchdecoupled/plan/costs.py for the format")
    try:
        layers = [_layer(i, c) for i, c in enumerate(d["layers"])]
        batch, inp = int(d["batch"]), int(d["input_bytes"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: malformed ({type(e).__name__}: {e}); each layer needs "
                         f"{', '.join(LAYER_KEYS)}, saves_input, saves_output") from None
    if not layers or batch < 1:
        raise ValueError(f"{where}: needs at least one layer and batch >= 1 (got {len(layers)} layers, batch {batch})")
    return Costs(layers, batch, inp, int(d.get("loss_bytes", 0)), str(d.get("device", "?")), str(d.get("model", "")),
                 str(d.get("note", "")), dict(d.get("heads") or {}))


def _layer(i: int, c: dict) -> LayerCost:
    values = {k: float(c[k]) if k.endswith("_s") else int(c[k]) for k in LAYER_KEYS}
    if any(not (math.isfinite(v) and v >= 0) for v in values.values()):
        raise ValueError(f"layer {i} has a negative or non-finite cost: {values}")
    return LayerCost(str(c.get("name", i)), str(c.get("type", "")), saves_input=bool(c["saves_input"]),
                     saves_output=bool(c["saves_output"]), **values)
