"""Shared parts of the fuzz tests (test_fuzz_cli.py, test_fuzz_api.py): hypothesis profiles, value strategies
and the in-process CLI runner that stops before training.

Profiles: ``ci`` (the default) is derandomized, so the same command tries the same inputs; ``explore``
draws fresh random inputs and more of them: ``TORCHDECOUPLED_FUZZ=explore pytest tests/test_fuzz_cli.py``.
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import signal
import urllib.request

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("explore", derandomize=False, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("TORCHDECOUPLED_FUZZ", "ci"))
SCALE = 4 if os.environ.get("TORCHDECOUPLED_FUZZ") == "explore" else 1  # explore: 4x the examples
HANG_S = 30  # an input that takes longer than this is a hang
OUTCOMES: collections.Counter = collections.Counter()  # (test, "accepted" or exit code): counts, for reports


class Stop(BaseException):
    """Raised in place of training: the input was accepted (not an Exception: nothing may catch it)."""


class Hang(BaseException):
    """An input that did not finish within HANG_S seconds."""


@contextlib.contextmanager
def alarm(seconds: int = HANG_S):
    def ring(signum, frame):
        raise Hang(f"no answer within {seconds} s")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _num(x) -> str:
    return repr(x)


# numbers as a command line gives them: small and huge integers, every float (NaN, inf, subnormal, 1e308)
INTS = st.one_of(st.integers(-3, 10), st.integers(-2**70, 2**70)).map(str)
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(_num), st.sampled_from(
    ["nan", "inf", "-inf", "1e400", "-0.0", "0", "1e-320", "5e-324", "1e308", "0x10", "1_000", " 1", "１"]))
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # unicode, control characters, NUL
ANY = st.one_of(INTS, FLOATS, TEXT)


def paths(root: str) -> st.SearchStrategy:
    """Paths of every kind under ``root`` (see ``make_tree``) and outside it (/proc, /sys: read-only)."""
    names = ["new", "file.txt", "dir", "run", "bad.toml", "dir.toml", "garbage/checkpoint.pt", "empty",
             "missing/deeper", "ünï/cödé", "file.txt/below"]
    return st.one_of(st.sampled_from([os.path.join(root, n) for n in names]),
                     st.sampled_from(["/proc/nope", "/proc/self/stat", "/sys/kernel/nope", "/proc", "/dev/null", ""]))


@contextlib.contextmanager
def inside_tree(root: str):
    """A fresh ``make_tree(root)`` as the working directory (a relative path an input names lands in the
    tree, not in the repository); removed afterwards. Prints the outcomes with $TORCHDECOUPLED_FUZZ_REPORT."""
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    make_tree(root)
    here = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(here)
        shutil.rmtree(root, ignore_errors=True)
        if os.environ.get("TORCHDECOUPLED_FUZZ_REPORT"):
            print("\nfuzz outcomes:", dict(sorted(OUTCOMES.items(), key=str)))


def make_tree(root: str) -> None:
    """The files ``paths`` names: a plain file, a directory, an earlier run, a bad TOML, a directory named
    like a TOML file, a garbage checkpoint, an empty directory."""
    os.makedirs(os.path.join(root, "dir"), exist_ok=True)
    os.makedirs(os.path.join(root, "dir.toml"), exist_ok=True)
    os.makedirs(os.path.join(root, "empty"), exist_ok=True)
    os.makedirs(os.path.join(root, "run"), exist_ok=True)
    os.makedirs(os.path.join(root, "garbage"), exist_ok=True)
    with open(os.path.join(root, "file.txt"), "w") as f:
        f.write("not a run\n")
    with open(os.path.join(root, "run", "metrics.jsonl"), "w") as f:
        f.write('{"epoch": 0}\n')
    with open(os.path.join(root, "bad.toml"), "wb") as f:
        f.write(b"stages = [\n\xff\xfe")
    with open(os.path.join(root, "garbage", "checkpoint.pt"), "wb") as f:
        f.write(b"\x80\x04garbage")


def snapshot(root: str) -> dict:
    """Every file under ``root`` with its size: what a refused input must leave as it was."""
    out = {}
    for d, _, files in os.walk(root):
        out[d] = None
        for n in files:
            p = os.path.join(d, n)
            out[p] = os.path.getsize(p)
    return out


def run_cli(argv: list[str]) -> tuple[object, list[str]]:
    """``torchdecoupled.cli.main(argv)`` in this process with training replaced by ``Stop``: returns
    ("accepted" or the exit code, stderr's lines). Restores torch's thread count."""
    from torchdecoupled import cli
    from torchdecoupled.pipeline import Pipeline

    def stop(self, *a, **k):
        raise Stop
    def offline(*a, **k):
        raise OSError("no network in the fuzz tests")
    err, threads, fit, urlopen = io.StringIO(), torch.get_num_threads(), Pipeline.fit, urllib.request.urlopen
    Pipeline.fit, urllib.request.urlopen = stop, offline  # --download must not reach the network
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), alarm():
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code
            except Stop:
                code = "accepted"
            except Hang as e:
                raise AssertionError(f"{argv}: {e}") from None  # an Exception: hypothesis shrinks and shows it
    finally:
        Pipeline.fit, urllib.request.urlopen = fit, urlopen
        torch.set_num_threads(threads)
    return code, err.getvalue().splitlines()


def assert_refused_in_one_line(code, lines: list[str], names: list[str]) -> None:
    """Exit 2, exactly one line on stderr, no traceback, and the line names one of ``names`` (the options
    given, or their values)."""
    lines = [ln for ln in lines if not ln.startswith("downloading ")]  # --download says what it tries first
    text = "\n".join(lines)
    assert code == 2, (code, text)
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    line = lines[0]
    assert line.startswith("torchdecoupled") and "error: " in line, line
    def bare(text: str) -> str:  # "CIFAR-10" names cifar10, "batch_size" names --batch-size
        return "".join(c for c in text.lower() if c.isalnum())
    low = bare(line) + line.lower()
    names = [x for n in names if n for x in (n, repr(n)[1:-1])]  # a message may show a value as its repr
    assert any(n.lower() in low or (bare(n) and bare(n) in low) for n in names), (line, names)
