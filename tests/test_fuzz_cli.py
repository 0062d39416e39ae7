"""Fuzzing the command line and the config file (hypothesis): every option of ``train``, ``compare``, ``eval``
and ``schedule``, and every key of a ``--config`` file, with values of every type and range (NaN, inf,
huge integers, unicode, NUL, paths that are files, missing or read-only). A value is either accepted (the
run gets as far as training, which is replaced by ``Stop``) or refused with exit 2 and exactly one line on
stderr that names the option or the value: never a traceback, never a hang (HANG_S), and a refused run
leaves the file system as it was (no run directory with partial files).

The options come from the parser itself: an option added later is fuzzed too (with any text or number,
or by its choices) without touching this file. Inputs tried: see ``--hypothesis-show-statistics``.
"""
from __future__ import annotations

import argparse
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_cases import (ANY, OUTCOMES, FLOATS, INTS, SCALE, TEXT, alarm, assert_refused_in_one_line, inside_tree, make_tree, paths,
                        run_cli, snapshot)
from torchdecoupled import config_file
from torchdecoupled.cli import parser
from torchdecoupled.config import DATASET_DEFAULTS
from torchdecoupled.data import load_dataset
from torchdecoupled.methods import METHODS
from torchdecoupled.models import MODELS

ROOT = "/tmp/torchdecoupled-fuzz-cli"  # one tree for the module (hypothesis reuses it across examples)
TINY = ["--dataset", "digits", "--epochs", "1", "--batch-size", "512", "--stages", "1", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def tree():
    load_dataset("digits")
    with inside_tree(ROOT) as root:
        yield root


def _actions(command: str) -> list[argparse.Action]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if not isinstance(a, argparse._HelpAction)]


def _words(*names) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(sorted(names)), TEXT)


def _ints_list() -> st.SearchStrategy:
    return st.lists(st.one_of(st.integers(-5, 400), st.integers(-2**70, 2**70)), max_size=4).map(
        lambda v: ",".join(map(str, v))) | TEXT


SPECIAL = {  # the values worth trying per option beyond ANY (which every option gets as well)
    "--method": _words(*METHODS), "--methods": st.lists(_words(*METHODS), max_size=3).map(",".join),
    "--dataset": _words("digits", "mnist1d", "mnist", "cifar10", "folder", "synthetic"),
    "--model": _words(*MODELS), "--optimizer": _words("sgd", "adam", "adamw", "SGD"),
    "--lr-schedule": _words("none", "cosine", "step"), "--dtype": _words("float32", "float64", "float16", "int64"),
    "--device": _words("cpu", "cuda", "cuda:0", "cuda:-1", "mps", "cpu:0", "cuda:99999999999999999999"),
    "--engine": _words("sim", "dist"), "--backend": _words("gloo", "nccl", "mpi"),
    "--order": _words("bf", "fb"), "--predictor": _words("none", "delta", "momentum"),
    "--head": _words("dgl", "linear", "infopro"), "--partition": _ints_list() | _words("params", "time", "uniform",
                                                                                     "flops"),
    "--milestones": _ints_list(),
    "--init-method": st.one_of(TEXT, st.sampled_from(["tcp://127.0.0.1:0", "tcp://127.0.0.1:99999", "tcp://:1",
                                                      "file:///proc/nope/x", "file:///", "env://", "tcp://[::1"])),
}


def _value(action: argparse.Action, root: str) -> st.SearchStrategy:
    """A strategy for the text after ``action``'s option (None: a flag without a value)."""
    name = action.option_strings[0] if action.option_strings else action.dest
    if action.nargs == 0:
        return st.none()
    if action.choices:
        return st.one_of(st.sampled_from(list(action.choices)), ANY)
    if action.metavar in ("DIR", "FILE", "RUN") or name in ("--out", "--resume", "--config", "--data-root", "run"):
        return paths(root)
    if action.type is int:
        return INTS
    if action.type is float:
        return FLOATS
    return st.one_of(SPECIAL.get(name, ANY), ANY)


def _flag(action: argparse.Action) -> st.SearchStrategy:
    if isinstance(action, argparse.BooleanOptionalAction):
        return st.sampled_from(action.option_strings)  # --x and --no-x
    return st.just(action.option_strings[0])


@st.composite
def argvs(draw, command: str, root: str, most: int = 3):
    """``command``'s tiny base arguments, then 1..most options drawn from every option it has."""
    actions = [a for a in _actions(command) if a.option_strings]
    chosen = draw(st.lists(st.sampled_from(actions), min_size=1, max_size=most, unique_by=lambda a: a.dest))
    argv, names = [], []
    for a in chosen:
        flag, value = draw(_flag(a)), draw(_value(a, root))
        argv += [flag] if value is None else [f"{flag}={value}"]  # = keeps a value like "-1" a value
        names += [n.lstrip("-") for n in a.option_strings if n.startswith("--")]
        names += [a.dest, a.dest.replace("_", " ")] + ([value] if value else [])
    return argv, names


def _refused_or_accepted(argv: list[str], names: list[str], root: str) -> object:
    before = snapshot(root)
    code, lines = run_cli(argv)
    OUTCOMES[argv[0], code] += 1
    if code == "accepted":
        make_tree(root)  # an accepted --force may have cleared the earlier run: lay it again
        return code
    assert_refused_in_one_line(code, lines, names + [v for v in argv if not v.startswith("-")])
    after = snapshot(root)
    changed = sorted(k for k in {*before, *after} if before.get(k, -1) != after.get(k, -1))
    assert not changed, f"a refused run changed the file system: {changed} ({lines})"
    return code


@settings(max_examples=180 * SCALE)
@given(data=st.data())
def test_train_options(tree, data):
    argv, names = data.draw(argvs("train", tree))
    _refused_or_accepted(["train", *TINY, *argv], names + ["digits", "512"], tree)


@settings(max_examples=40 * SCALE)
@given(data=st.data())
def test_compare_options(tree, data):
    argv, names = data.draw(argvs("compare", tree, most=2))
    _refused_or_accepted(["compare", "--methods", "bp", *TINY, *argv], names + ["digits", "512", "bp"], tree)


@settings(max_examples=60 * SCALE)
@given(data=st.data())
def test_schedule_options(tree, data):
    argv, names = data.draw(argvs("schedule", tree))
    code, lines = run_cli(["schedule", *argv])
    OUTCOMES["schedule", code] += 1
    if code not in ("accepted", 0):
        assert_refused_in_one_line(code, lines, names)


@settings(max_examples=30 * SCALE)
@given(run=paths(ROOT), extra=st.lists(st.sampled_from(["--dataset", "--data-root"]), max_size=2, unique=True),
       value=ANY)
def test_eval_arguments(tree, run, extra, value):
    argv = ["eval", run] + [x for e in extra for x in (f"{e}={value}",)]
    before = snapshot(tree)
    code, lines = run_cli(argv)
    OUTCOMES["eval", code] += 1
    assert code != 0, "eval scored a directory that holds no run"
    assert_refused_in_one_line(code, lines, [run, value, "run", "summary.json", "model.pt"])
    assert snapshot(tree) == before


# ---- the config file ------------------------------------------------------------------------------------

TOML_SCALARS = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True),
                         TEXT.filter(lambda s: "\x00" not in s))
TOML_VALUES = st.one_of(TOML_SCALARS, st.lists(TOML_SCALARS, max_size=3), st.dictionaries(
    st.text("abcdefgh_", min_size=1, max_size=6), TOML_SCALARS, max_size=2))


def _toml(key: str, value) -> str:
    if isinstance(value, dict):
        return f"[{key}]\n" + "".join(f"{k} = {config_file._toml(v)}\n" for k, v in value.items())
    return f"{key} = {config_file._toml(value)}\n"


def _good(key: str, kind: type) -> st.SearchStrategy:
    """Values of the key's own type (so that its range, not only its type, is fuzzed)."""
    by_kind = {bool: st.booleans(), int: st.integers(-3, 10) | st.integers(-2**63, 2**63 - 1),
               float: st.floats(allow_nan=True), str: SPECIAL.get("--" + key.replace("_", "-"), TEXT),
               tuple: st.lists(st.integers(-3, 400), max_size=3), list: st.lists(TEXT, max_size=2),
               dict: st.dictionaries(st.sampled_from(["hidden", "width", "depth", "nope"]), TOML_SCALARS, max_size=2)}
    return by_kind[kind].filter(lambda v: not isinstance(v, str) or "\x00" not in v)


BASE_KEYS = {"dataset": "digits", "epochs": 1, "batch_size": 512, "stages": 1, "progress": False}


@settings(max_examples=150 * SCALE)
@given(data=st.data(), fmt=st.sampled_from([".toml", ".yaml"]))
def test_config_file_keys(tree, data, fmt):
    keys = data.draw(st.lists(st.sampled_from(sorted(config_file.KEYS) + ["nope", "method_opts", "Stages"]),
                              min_size=1, max_size=2, unique=True))
    given_ = {k: data.draw(st.one_of(_good(k, config_file.KEYS[k]), TOML_VALUES) if k in config_file.KEYS
                           else TOML_VALUES) for k in keys}
    flat = {**BASE_KEYS, **given_}
    path = os.path.join(tree, f"fuzz{fmt}")
    if fmt == ".toml":
        scalars = {k: v for k, v in flat.items() if not isinstance(v, dict)}
        text = "".join(_toml(k, v) for k, v in scalars.items()) + "".join(
            _toml(k, v) for k, v in flat.items() if isinstance(v, dict))
    else:
        import yaml
        text = yaml.safe_dump(flat, allow_unicode=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        names = [path] + [x for k, v in given_.items() for x in (k, k.replace("_", "-"), k.replace("_", " "),
                                                                   str(v), repr(v))]
        names += [str(x) for v in given_.values() if isinstance(v, dict) for x in v]  # model_opts' keys
        names += [v.split("_")[0] for v in given_.values() if isinstance(v, str) and len(v.split("_")[0]) >= 3]
        _refused_or_accepted(["train", "--config", path], names, tree)
    finally:
        os.remove(path)


def test_every_option_and_key_is_fuzzed():
    """The strategies above cover what the parser and the config file have today (an oracle: the lists)."""
    with alarm():
        train = {a.option_strings[0] for a in _actions("train") if a.option_strings}
    assert {"--method", "--out", "--config", "--stages", "--seed", "--timeout", "--beta"} <= train
    assert set(config_file.KEYS) >= {"method", "stages", "milestones", "model_opts", "threads"}
    assert set(DATASET_DEFAULTS) >= {"digits", "mnist1d"}


# ---- what the fuzzer found, each pinned (before: a traceback, a crash, a hang, two lines or a silent accept) --

FOUND = [
    (["train", *TINY, "--seed=99999999999999999999"], "--seed must be an integer in [0, 2**48 - 1]"),  # Overflow...
    (["train", *TINY, "--threads=100000"], "--threads must be in [1, 1024]"),  # OpenBLAS: a segmentation fault
    (["train", *TINY, "-m", "adl", "--warmup=nan"], "warmup must be a finite number >= 0"),  # accepted
    (["train", *TINY, "-m", "adl", "--accumulate=99999999999999999999"], "accumulate must be at most 4096"),  # hang
    (["train", *TINY, "--milestones=-5"], "--milestones are epochs >= 1"),  # accepted, never reached
    (["train", *TINY, "--order=x"], "argument --order: invalid choice: 'x'"),  # argparse's usage block: 20 lines
    (["train", *TINY, f"--out={ROOT}/never-made", "--partition=0"], "1 stages need 0 boundaries"),  # config line first
    (["train", *TINY, "--out=/proc/nope/x"], "--out '/proc/nope/x': cannot write there"),  # [Errno 2] only
    (["train", *TINY, f"--config={ROOT}/dir.toml"], "Is a directory"),  # IsADirectoryError: a traceback
    (["schedule", "--stages=100000"], "--stages must be in [1, 64] for a drawing"),  # hang (minutes)
    (["schedule", "-N", "99999999"], "--batches must be in [1, 1024] for a drawing"),
]


@pytest.mark.parametrize("argv,message", FOUND, ids=[" ".join(a[-1:]) for a, _ in FOUND])
def test_what_the_fuzzer_found(tree, argv, message):
    before = snapshot(tree)
    code, lines = run_cli(argv)
    assert code == 2 and len(lines) == 1 and message in lines[0], (code, lines)
    assert snapshot(tree) == before  # --out ROOT/never-made: not made, no config.toml
