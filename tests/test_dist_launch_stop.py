"""The launcher's bounds and stops (engines/dist_launch.py, engines/dist.py): SIGTERM stops a run as Ctrl-C
does and leaves no process behind; set-up cannot outlast --timeout; a file:// rendezvous must be new."""
import os
import signal
import subprocess
import sys
import time

import pytest

from dist_cases import descendants, tiny_cfg
from torchdecoupled.engines import dist
from torchdecoupled.run import train

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = ["--dataset", "mnist1d", "--model", "mlp", "--epochs", "2", "--batch-size", "400", "--stages", "2",
        "--engine", "dist", "--no-progress", "--timeout", "60", "--no-trace"]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""  # gone


def _alive(pids) -> set[int]:
    return {p for p in pids if _state(p) not in ("", "Z")}


def test_sigterm_to_the_launcher_kills_every_process_and_says_so_in_one_line():
    env = {**os.environ, "TORCHDECOUPLED_FAULT": "1:3:stop"}
    launcher = subprocess.Popen([sys.executable, "-m", "torchdecoupled", "train", *TINY], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(_state(p) == "T" for p in descendants(launcher.pid)):  # stage 1 stopped itself at tick 3
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.05)
        tree = descendants(launcher.pid)  # the stages, the forkserver, the resource tracker
        assert len(tree) >= 4, tree
        sent = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if launcher.poll() is None:
            launcher.kill()
    lines = err.strip().splitlines()
    assert launcher.returncode == 1 and took < 5, (launcher.returncode, took, err)
    assert lines[-1] == ("torchdecoupled: error: distributed run stopped by SIGTERM: every stage process was "
                         "killed"), err
    assert [l for l in lines if not l.startswith("config")] == lines[-1:], err  # nothing else but the config line
    deadline = time.monotonic() + 5
    while _alive(tree) and time.monotonic() < deadline:  # the helpers end once the launcher has gone
        time.sleep(0.05)
    assert not _alive(tree), {p: _state(p) for p in _alive(tree)}


NEVER_SET_UP = """
import sys
from torchdecoupled.cli import main
from torchdecoupled.engines import dist
dist.check_init_method = lambda url: None  # let the launcher try a rendezvous that cannot complete
sys.exit(main(sys.argv[1:]))
"""


def test_set_up_that_never_completes_fails_after_the_timeout(tmp_path):
    # torch's FileStore waits forever for a directory that is not there: set-up must not (in a child: if it
    # hangs, this test fails instead of hanging)
    argv = [*TINY, "--timeout", "2", "--init-method", f"file://{tmp_path}/missing/rdv"]
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", NEVER_SET_UP, "train", *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    took = time.monotonic() - start
    assert r.returncode == 1 and took < 20, (r.returncode, took, r.stderr)
    assert r.stderr.strip().splitlines()[-1] == (
        "torchdecoupled: error: distributed run failed: stage 0 (rank 0), stage 1 (rank 1) still setting up after "
        f"2 s (--timeout): the rendezvous through --init-method file://{tmp_path}/missing/rdv did not complete, or "
        "a peer did not answer; check it, or raise --timeout if set-up needs longer"), r.stderr


def test_a_file_rendezvous_must_be_a_new_file_in_a_directory_that_exists(tmp_path):
    with pytest.raises(ValueError, match=f"no directory '{tmp_path}/missing' for the rendezvous file: create it"):
        dist.check_init_method(f"file://{tmp_path}/missing/rdv")
    stale = tmp_path / "rdv"
    stale.write_text("")
    with pytest.raises(ValueError, match="already exists \\(a stale rendezvous file, left by an earlier run\\?\\): "
                                         "delete it, or choose a new path"):
        dist.check_init_method(f"file://{stale}")
    with pytest.raises(ValueError, match="file:// needs the path of a file"):
        dist.check_init_method(f"file://{tmp_path}/")
    dist.check_init_method(f"file://{tmp_path}/new")  # a new file in a folder that exists


def test_a_file_rendezvous_leaves_no_file_so_the_same_command_runs_again(tmp_path):
    url = f"file://{tmp_path}/rdv"
    first = train(tiny_cfg(init_method=url, epochs=1))
    assert not os.path.exists(tmp_path / "rdv")
    assert train(tiny_cfg(init_method=url, epochs=1))["params_sha256"] == first["params_sha256"]
