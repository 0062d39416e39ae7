"""benchmarks/gpu_check.py runs end to end on the CPU (--device cpu --quick) and prints one JSON line;
without a GPU it says so in that line and exits 2. No timing assertion."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
KEYS = {"ok", "reason", "device", "quick", "command", "torch", "cuda", "cudnn", "gpu", "commit", "dirty", "total_s"}


def run_script(*args: str, **env: str) -> tuple[int, dict, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}  # the suite shares a 2-core machine
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON line, got {len(lines)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.returncode, json.loads(lines[0]), proc.stderr


def test_quick_cpu_run_passes_every_check():
    rc, report, err = run_script("--device", "cpu", "--quick")
    assert rc == 0 and report["ok"] is True and report["reason"] is None, err
    assert KEYS | {"checks"} <= set(report)
    assert report["device"] == "cpu" and report["quick"] is True and report["total_s"] > 0
    assert report["command"].endswith("gpu_check.py --device cpu --quick")
    checks = report["checks"]
    assert set(checks) == {"cuda_vs_cpu", "steps", "stages"} and all(c["passed"] for c in checks.values())
    cmp = checks["cuda_vs_cpu"]
    assert cmp["compared"] == ["cpu", "cpu"] and "cpu against cpu" in cmp["note"] and cmp["rtol"] == 1e-4
    assert set(cmp["runs"]) == {"fdg_k2", "bp_k1"}
    assert all(r["max_abs_diff"] == 0.0 and r["max_rel_diff"] == 0.0 for r in cmp["runs"].values())  # one device
    assert cmp["fdg_vs_bp_rel"] > cmp["rtol"]  # the tolerance tells FDG from BP
    steps = checks["steps"]
    for dtype in ("float32", "bfloat16"):
        assert steps[dtype]["finite"] and isinstance(steps[dtype]["ms_per_step"], float)  # no timing assertion
    for k in (2, 4):
        split = checks["stages"]["split"][f"k{k}"]
        assert len(split["ms"]) == k and split["balance"] >= 1.0 and sum(split["blocks"]) == 11  # ResNet-20


def test_no_gpu_is_a_json_line_and_exit_2():
    rc, report, err = run_script(CUDA_VISIBLE_DEVICES="")  # hides any GPU: the default --device cuda has none
    assert rc == 2 and report["ok"] is False and "no CUDA GPU" in report["reason"]
    assert KEYS <= set(report) and "checks" not in report and "Traceback" not in err
