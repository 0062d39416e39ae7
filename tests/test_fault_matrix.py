"""The fault matrix: SIGKILL, SIGSTOP, SIGINT and SIGTERM to a stage process and to the launcher, at a seeded
random moment after the first checkpoint, K = 2 and 3, with and without replicas, on both engines (the
simulator is one process: only the signals to it make sense). Every case ends within --timeout plus a few
seconds, with the exit and the one line below, leaves no process behind, and ``--resume`` then ends with the
uninterrupted run's weights (``params_sha256`` in summary.json).

What each signal does (the expected column of the matrix):

- stage SIGKILL, SIGTERM: exit 1, ``stage s (rank r) died at tick T (killed by SIGKILL)``;
- stage SIGSTOP: exit 1 after --timeout, ``stage s (rank r) stopped at tick T (its process is stopped``;
- stage SIGINT: ignored (Ctrl-C is the launcher's to handle, for the whole process group): the run ends
  normally with the uninterrupted weights;
- launcher SIGKILL: exit -9, no message (nothing runs to print one); the stage processes see their pipe
  close and exit; launcher SIGTERM: exit 1, ``stopped by SIGTERM``; SIGINT: exit 130, ``interrupted``;
- launcher SIGSTOP: the run pauses (nothing can end a stopped process's run from inside it); SIGCONT
  after 1 s and it ends normally.

The default run has 4 representative cases; the whole matrix (40) runs with
``.venv/bin/python -m pytest -m slow tests/test_fault_matrix.py``.
"""
from __future__ import annotations

import re
import signal
import zlib

import pytest

from fault_cases import TIMEOUT_S, interrupt, reference, resume

KILL, STOP, INT, TERM = signal.SIGKILL, signal.SIGSTOP, signal.SIGINT, signal.SIGTERM
EXPECT = {  # (victim, signal) -> (exit code, the last line of stderr as a pattern)
    ("stage", KILL): (1, r"distributed run failed: stage (\d) \(rank (\d)\) died at tick \d+ \(killed by SIGKILL\)"),
    ("stage", TERM): (1, r"distributed run failed: stage (\d) \(rank (\d)\) died at tick \d+ \(killed by SIGTERM\)"),
    ("stage", STOP): (1, r"distributed run failed: stage (\d) \(rank (\d)\) stopped at tick \d+ \(its process is "
                         r"stopped"),
    ("stage", INT): (0, None),
    ("launcher", KILL): (-9, None), ("launcher", STOP): (0, None),
    ("launcher", TERM): (1, r"distributed run stopped by SIGTERM: every stage process was killed"),
    ("launcher", INT): (130, r"torchdecoupled: interrupted"),
}
SIM_EXPECT = {KILL: -9, TERM: -15, INT: 130, STOP: 0}  # the simulator: the one process's own ending

CASES = [("dist", victim, sig, K, D) for victim in ("stage", "launcher") for sig in (KILL, STOP, INT, TERM)
         for K in (2, 3) for D in (1, 2)] + [("sim", "launcher", sig, K, 1) for sig in (KILL, STOP, INT, TERM)
                                             for K in (2, 3)]
FAST = {("dist", "stage", KILL, 2, 1), ("dist", "launcher", TERM, 2, 1),
        ("sim", "launcher", INT, 2, 1), ("dist", "launcher", KILL, 2, 1)}  # one reference run (K 2, D 1)
_REFERENCE: dict = {}


def _name(case) -> str:
    engine, victim, sig, K, D = case
    return f"{engine}-{'process' if engine == 'sim' else victim}-{sig.name}-K{K}-D{D}"


def _reference(tmp_path_factory, K: int, D: int) -> str:
    """The uninterrupted run's weights: the simulator's for D = 1 (the distributed engine's equal them bit
    for bit), the distributed engine's for D = 2."""
    if (K, D) not in _REFERENCE:
        out = str(tmp_path_factory.mktemp(f"reference-K{K}-D{D}") / "run")
        _REFERENCE[K, D] = reference(out, K, D, "sim" if D == 1 else "dist")
    return _REFERENCE[K, D]


@pytest.mark.parametrize("case", [pytest.param(c, id=_name(c), marks=() if c in FAST else pytest.mark.slow)
                                  for c in CASES])
def test_fault(case, tmp_path, tmp_path_factory):
    engine, victim, sig, K, D = case
    out = str(tmp_path / "run")
    got = interrupt(out, K, D, engine, sig, victim, seed=zlib.crc32(_name(case).encode()))
    last = (got["stderr"].strip().splitlines() or [""])[-1]
    code, pattern = EXPECT[victim, sig] if engine == "dist" else (SIM_EXPECT[sig], None)
    assert got["code"] == code, (got["code"], got["stderr"][-2000:])
    if pattern is not None:
        m = re.search(pattern, last)
        assert m, got["stderr"][-2000:]
        if victim == "stage":  # the victim itself is named: its stage and its rank
            assert (int(m.group(1)), int(m.group(2))) == (got["rank"] // D, got["rank"]), (last, got["rank"])
    assert "Traceback" not in got["stderr"], got["stderr"][-2000:]
    assert got["seconds"] < TIMEOUT_S + 15, got["seconds"]
    assert not got["left"], got["left"]
    want = _reference(tmp_path_factory, K, D)
    if code == 0:  # the run went on to the end
        import json
        with open(f"{out}/summary.json") as f:
            assert json.load(f)["params_sha256"] == want
    else:
        assert resume(out, K, D, engine)["params_sha256"] == want
    print(f"\nmatrix {_name(case)}: exit {got['code']}, {got['seconds']:.2f} s to stop, {len(got['left'])} left")
