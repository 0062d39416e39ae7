"""The README's Python API example runs as written, on the multi-process engine, and learns."""
import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_the_readme_python_example_runs_as_written(tmp_path):
    text = open(README).read().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert 'engine="dist"' in code
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=tmp_path,
                       env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    acc = float(re.search(r"test accuracy ([0-9.]+)", p.stdout).group(1))
    assert acc > 0.9
