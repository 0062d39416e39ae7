"""What one GPU can: the simulator on CUDA against the CPU, float32 and bfloat16 steps, per-stage timings.

    python benchmarks/gpu_check.py                        # one NVIDIA GPU, a minute or two
    python benchmarks/gpu_check.py --device cpu --quick   # the smoke test (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --costs gpu.json      # also the planner's cost file (torchdecoupled plan --costs)

Prints exactly one JSON line on stdout (progress goes to stderr); "ok" is true iff every check passed.

1. cuda_vs_cpu: the same seeded tanh CNN on scikit-learn's digits (a seeded synthetic set without sklearn),
   trained 40 steps by FDG K=2 and by BP K=1, once on the CPU and once on the device, float32, with TF32
   off and deterministic algorithms where PyTorch has them. Passes iff for both runs the largest
   parameter difference, relative to the largest magnitude of that parameter tensor, is <= RTOL.
   With --device cpu both runs are on the CPU (the report says so; they agree exactly).
2. steps: ResNet-20, batch 128, synthetic 3x32x32 input, FDG K=2 in the simulator, in float32 and in
   bfloat16 (model and inputs cast); the median milliseconds per steady-state simulator tick (one step of
   every stage), from fits of two lengths after a warm-up. Passes iff both ran and both losses stay finite.
3. stages: forward + backward time of each stage's module (``pipe.stages[k].module``) of that ResNet-20
   cut into K = 2 and 4 stages, float32, and the balance max/mean. Passes iff every stage was timed.

Exit status: 0 every check passed, 1 a check failed, 2 it could not run (no GPU, an unusable --device).
"""
from __future__ import annotations

import os
import time

T0 = time.perf_counter()  # total_s counts from here, the import of torch included
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts: deterministic cuBLAS

import argparse
import contextlib
import inspect
import json
import math
import shlex
import statistics
import subprocess
import sys
import traceback
from pathlib import Path

import torch
from torch import nn

import torchdecoupled as td
from torchdecoupled.models import build_model

# Measured on the CPU (docs/gpu.md): 40 steps of the tanh CNN turn a relative perturbation e of every initial
# weight into 2e-5e, and another summation order (1 thread against 2) into 4e-7. A wrong delay moves the
# weights by far more: FDG against BP differ by 9e-2 (the "fdg_vs_bp_rel" field).
RTOL = 1e-4
LR_CMP, LR_STEPS = 0.1, 0.05
FULL = dict(cmp_steps=40, cmp_batch=64, in_shape=(3, 32, 32), batch=128, warmup=10, short=4, window=16, repeats=5,
            reps=20)
QUICK = dict(cmp_steps=8, cmp_batch=32, in_shape=(3, 16, 16), batch=16, warmup=4, short=2, window=3, repeats=3, reps=3)
ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device | None) -> dict:
    gpu = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else None
    status = git("status", "--porcelain")
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "gpu": gpu, "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(status) if status is not None else None}


def device_problem(name: str) -> str | None:
    """Why the checks cannot run on --device `name` (None: they can)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"--device must be cuda, cuda:N or cpu (got {name!r})"
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        return f"--device must be cuda, cuda:N or cpu (got {name!r}): the checks are for NVIDIA GPUs"
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return (f"no CUDA GPU: torch {torch.__version__} is a CPU-only build; install a CUDA build "
                    f"(README, 'GPU users'), or pass --device cpu for a smoke test")
        return (f"no CUDA GPU visible to torch {torch.__version__} (CUDA {torch.version.cuda}): check nvidia-smi "
                f"and CUDA_VISIBLE_DEVICES, or pass --device cpu for a smoke test")
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        valid = ", ".join(f"cuda:{i}" for i in range(count))
        return f"--device {name}, but torch sees {count} GPU(s) (valid: {valid})"
    return None


@contextlib.contextmanager
def strict_numerics():
    """TF32 off and deterministic kernels (warn where PyTorch has none); the previous settings after."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = False, False, True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(1797, 1, 8, 8, generator=g), torch.randint(0, 10, (1797,), generator=g), "synthetic"
    raw = load_digits()
    x = torch.tensor(raw.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(raw.target, dtype=torch.long), "digits"


def tanh_cnn(channels: int = 16) -> nn.Sequential:
    """The zoo's cnn2d for 1x8x8 digits with tanh and average pooling: no kinks, so a small difference in the
    arithmetic stays small (with ReLU and max pooling, a value that changes sides moves a whole gradient)."""
    c = channels
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.Tanh()),
        nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2)),
        nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(2 * c * 2 * 2, 10)))


def train_digits(method: str, stages: int, device: torch.device, data, steps: int, batch: int, seed: int):
    """The seeded tanh CNN trained `steps` steps; its parameters (on the CPU) and accuracy on all the data."""
    x, y = data
    torch.manual_seed(seed)
    model = tanh_cnn().to(device)  # built on the CPU: the same initial weights on every device
    pipe = td.Pipeline(model, method=method, stages=stages, optimizer=sgd(LR_CMP), seed=seed)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    idx = [order[(i * batch + torch.arange(batch)) % len(x)] for i in range(steps)]
    pipe.fit([(x[i].to(device), y[i].to(device)) for i in idx], epochs=1)
    params = [p.detach().cpu() for s in pipe.stages for p in s.module.parameters()]
    return params, pipe.evaluate(x.to(device), y.to(device))["test_acc"]


def differences(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """Max |a - b| over all parameters, and max over tensors of max |a - b| / max |b|."""
    assert len(a) == len(b), (len(a), len(b))
    diffs = [(p - q).abs().max().item() for p, q in zip(a, b)]
    rel = [d / max(q.abs().max().item(), 1e-12) for d, q in zip(diffs, b)]
    return max(diffs), max(rel)


def check_cuda_vs_cpu(device: torch.device, size: dict, seed: int) -> dict:
    x, y, source = digits(seed)
    cpu = torch.device("cpu")
    out = {"compared": [str(device), "cpu"], "data": source, "steps": size["cmp_steps"], "batch": size["cmp_batch"],
           "dtype": "float32", "rtol": RTOL, "tf32": False, "deterministic_algorithms": True, "runs": {}}
    if device.type == "cpu":
        out["note"] = "--device cpu: a smoke test, both runs are on the CPU (cpu against cpu)"
    ref = {}
    with strict_numerics():
        for method, stages in (("fdg", 2), ("bp", 1)):
            log(f"cuda_vs_cpu: {method} K={stages}, {out['steps']} steps on cpu and on {device}")
            args = ((x, y), size["cmp_steps"], size["cmp_batch"], seed)
            ref[method], acc_cpu = train_digits(method, stages, cpu, *args)
            dev, acc_dev = train_digits(method, stages, device, *args)
            abs_diff, rel_diff = differences(dev, ref[method])
            out["runs"][f"{method}_k{stages}"] = {"max_abs_diff": abs_diff, "max_rel_diff": rel_diff,
                                                  "acc_cpu": acc_cpu, "acc_device": acc_dev,
                                                  "passed": rel_diff <= RTOL}
    out["fdg_vs_bp_rel"] = differences(ref["fdg"], ref["bp"])[1]  # the size of a real difference
    out["passed"] = all(r["passed"] for r in out["runs"].values())
    return out


def synthetic(size: dict, device: torch.device, dtype: torch.dtype, seed: int, count: int = 4) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    shape = (size["batch"], *size["in_shape"])
    pairs = [(torch.randn(shape, generator=g), torch.randint(0, 10, shape[:1], generator=g)) for _ in range(count)]
    return [(x.to(device, dtype), y.to(device)) for x, y in pairs]


def resnet20(size: dict, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_model("resnet20", 10, size["in_shape"]).to(device, dtype)


def resnet_pipeline(size: dict, device: torch.device, dtype: torch.dtype, stages: int, seed: int) -> td.Pipeline:
    """ResNet-20 on `device` in `dtype`, FDG on `stages` stages: the simulator's stages run there."""
    model = resnet20(size, device, dtype, seed)
    return td.Pipeline(model, method="fdg", stages=stages, optimizer=sgd(LR_STEPS), seed=seed)


def fit(pipe: td.Pipeline, batches: list[tuple]):
    """``pipe.fit(batches, epochs=1)``, without a progress bar where fit draws one."""
    quiet = {"progress": False} if "progress" in inspect.signature(pipe.fit).parameters else {}
    return pipe.fit(batches, epochs=1, **quiet)


def last_train_loss(history) -> float | None:
    """The last training loss in what fit returned (one record per epoch, or per stage), if it has one."""
    last = history[-1] if isinstance(history, list) and history and isinstance(history[-1], dict) else {}
    if "train_loss" in last:
        return float(last["train_loss"])
    return last["loss_sum"] / last["samples"] if last.get("samples") else None


def time_steps(device: torch.device, size: dict, dtype: torch.dtype, seed: int) -> dict:
    """Median ms per steady-state simulator tick of FDG K=2: a fit of short + window batches against one of
    short batches (the same fill, drain and set-up), `repeats` times, after a warm-up fit."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipe = resnet_pipeline(size, device, dtype, 2, seed)
    pool = synthetic(size, device, dtype, seed)

    def seconds(n: int):
        sync(device)
        start = time.perf_counter()
        history = fit(pipe, [pool[i % len(pool)] for i in range(n)])
        sync(device)
        return time.perf_counter() - start, history

    seconds(size["warmup"])  # a second fit continues the same stages
    short, window, ms = size["short"], size["window"], []
    for _ in range(size["repeats"]):
        (t_long, history), (t_short, _) = seconds(short + window), seconds(short)
        ms.append((t_long - t_short) * 1000 / window)
    train_loss, eval_loss = last_train_loss(history), pipe.evaluate(*pool[0])["test_loss"]
    finite = all(torch.isfinite(p).all().item() for s in pipe.stages for p in s.module.parameters())
    finite = finite and math.isfinite(eval_loss) and (train_loss is None or math.isfinite(train_loss))
    return {"ms_per_step": statistics.median(ms), "ms_repeats": [round(v, 3) for v in ms], "train_loss": train_loss,
            "eval_loss": eval_loss, "finite": finite,
            "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None}


def check_steps(device: torch.device, size: dict, seed: int) -> dict:
    out = {"model": "resnet20", "method": "fdg", "stages": 2, "batch": size["batch"], "in_shape": size["in_shape"],
           "timing": f"median of {size['repeats']}: (fit of {size['short'] + size['window']} batches - fit of "
                     f"{size['short']}) / {size['window']}, after a fit of {size['warmup']}"}
    if device.type == "cuda":
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        log(f"steps: resnet20 FDG K=2 {name}, batch {size['batch']}")
        out[name] = time_steps(device, size, dtype, seed)
    out["bf16_speedup"] = out["float32"]["ms_per_step"] / out["bfloat16"]["ms_per_step"]
    out["passed"] = out["float32"]["finite"] and out["bfloat16"]["finite"]
    return out


def fwd_bwd_ms(module: torch.nn.Module, x: torch.Tensor, first: bool, labels: torch.Tensor | None, reps: int,
               device: torch.device) -> float:
    """Median ms of one forward + backward of a stage's module, as the stage computes it: the input's
    gradient too unless `first`, the loss on `labels` at the last stage, else a gradient from above."""
    x = x.detach().requires_grad_(not first)
    grad, times = None, []
    for i in range(reps + 3):  # 3 warm-up repeats
        module.zero_grad(set_to_none=True)
        x.grad = None
        sync(device)
        start = time.perf_counter()
        out = module(x)
        if labels is not None:
            torch.nn.functional.cross_entropy(out, labels).backward()
        else:
            grad = torch.ones_like(out) if grad is None else grad
            out.backward(grad)  # the values do not matter for the time
        sync(device)
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def check_stages(device: torch.device, size: dict, seed: int) -> dict:
    x, y = synthetic(size, device, torch.float32, seed, count=1)[0]
    model = resnet20(size, device, torch.float32, seed)
    out = {"model": "resnet20", "batch": size["batch"], "dtype": "float32", "reps": size["reps"],
           "whole_model_ms": fwd_bwd_ms(model, x, True, y, size["reps"], device), "split": {}}
    for stages in (2, 4):
        log(f"stages: resnet20 cut into K={stages}, forward + backward of each stage")
        modules = [s.module for s in resnet_pipeline(size, device, torch.float32, stages, seed).stages]
        inputs, h = [], x
        with torch.no_grad():
            for m in modules:
                inputs.append(h)
                h = m(h)
        ms = [fwd_bwd_ms(m, h_in, k == 0, y if k == stages - 1 else None, size["reps"], device)
              for k, (m, h_in) in enumerate(zip(modules, inputs))]
        out["split"][f"k{stages}"] = {
            "ms": ms, "balance": max(ms) / statistics.mean(ms), "sum_ms": sum(ms),
            "blocks": [len(m) for m in modules], "params": [sum(p.numel() for p in m.parameters()) for m in modules]}
    out["passed"] = all(v > 0 and math.isfinite(v) for s in out["split"].values() for v in s["ms"])
    return out


CHECKS = {"cuda_vs_cpu": check_cuda_vs_cpu, "steps": check_steps, "stages": check_stages}


def run_check(name: str, device: torch.device, size: dict, seed: int) -> dict:
    """One check; an exception fails it (the traceback on stderr, the message in the report)."""
    start = time.perf_counter()
    try:
        result = CHECKS[name](device, size, seed)
    except Exception as e:  # noqa: BLE001 - report it and go on to the next check
        traceback.print_exc(file=sys.stderr)
        result = {"passed": False, "error": f"{type(e).__name__}: {e}"}
    result["seconds"] = round(time.perf_counter() - start, 2)
    log(f"{name}: {'passed' if result['passed'] else 'FAILED'} ({result['seconds']} s)")
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke test")
    ap.add_argument("--quick", action="store_true", help="shrink every size (seconds on a CPU; no timing value)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--costs", metavar="FILE", help="also write the planner's per-layer cost file of --costs-model "
                                                    "on the device (torchdecoupled plan --costs FILE)")
    ap.add_argument("--costs-model", default="resnet20", help="zoo model for --costs, CIFAR-shaped (default resnet20)")
    return ap.parse_args(argv)


def write_costs(args, device: torch.device, size: dict) -> str:
    """--costs FILE: torchdecoupled.plan.costs.measure of the model on the device (synchronised per layer)."""
    from torchdecoupled.plan import costs, zoo_inputs
    model, x, y = zoo_inputs(args.costs_model, "cifar10", size["batch"], args.seed)
    log(f"costs: {args.costs_model}, batch {size['batch']}, per layer on {device} -> {args.costs}")
    c = costs.measure(model.to(device), x.to(device), y.to(device), repeats=size["repeats"], threads=None,
                      model_name=args.costs_model)
    return costs.save(c, args.costs)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    problem = device_problem(args.device)
    device = None if problem else torch.device(args.device)
    report = {"ok": False, "reason": problem, "device": args.device, "quick": args.quick,
              "command": shlex.join(["python", *(sys.argv if argv is None else [sys.argv[0], *argv])]),
              **environment(device)}
    if device is None:
        log(f"cannot run: {problem}")
    else:
        size = QUICK if args.quick else FULL
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON line only
            report["checks"] = {name: run_check(name, device, size, args.seed) for name in CHECKS}
            if args.costs:
                report["costs_file"] = write_costs(args, device, size)
        failed = [name for name, c in report["checks"].items() if not c["passed"]]
        report["ok"] = not failed
        report["reason"] = f"failed: {', '.join(failed)}" if failed else None
    report["total_s"] = round(time.perf_counter() - T0, 2)
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 2 if device is None else 1


if __name__ == "__main__":
    sys.exit(main())
