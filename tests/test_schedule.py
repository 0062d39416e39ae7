"""Schedules as data: golden grids, the spec's formulas, the dry-run validator, staleness tables."""
import json
import pathlib
import re

import pytest

from torchdecoupled.schedule import (FAMILIES, ORDERS, Action, Schedule, ScheduleError, format_grid,
                                     steady_staleness, validate)

GOLDEN = pathlib.Path(__file__).parent / "golden" / "schedules.txt"


def golden_cases():
    text = GOLDEN.read_text()
    for block in text.strip().split("\n\n"):
        header, body = block.split("\n", 1)
        m = re.match(r"## family=(\w+) order=(\w+) K=(\d) N=(\d+) M=(\d+)", header)
        yield (m[1], m[2], int(m[3]), int(m[4]), int(m[5])), body


@pytest.mark.parametrize("case,grid", list(golden_cases()), ids=lambda v: str(v)[:40])
def test_golden_grids(case, grid):
    family, order, K, N, M = case
    assert format_grid(Schedule(family, K, N, order, M)) == grid


def test_golden_file_covers_every_family_order_and_k():
    seen = {(c[0], c[1], c[2]) for c, _ in golden_cases()}
    for K in range(1, 5):
        for fam in ("bp", "locked", "local"):
            assert (fam, "bf", K) in seen
        for order in ORDERS:
            assert ("decoupled", order, K) in seen


def test_fdg_k3_figure_drawn_by_hand():
    # FDG paper's Fig. 2 shape, written independently of format_grid.
    s = Schedule("decoupled", 3, 4, "bf")
    cells = [[" ".join(map(str, s.actions(t, k))) for k in range(3)] for t in range(s.num_ticks)]
    assert cells == [
        ["F0", "", ""],
        ["F1", "F0", ""],
        ["F2", "F1", "F0 B0 U"],
        ["F3", "B0 U F2", "F1 B1 U"],
        ["B0 U", "B1 U F3", "F2 B2 U"],
        ["B1 U", "B2 U", "F3 B3 U"],
        ["B2 U", "B3 U", ""],
        ["B3 U", "", ""],
    ]


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("order", ORDERS)
def test_decoupled_matches_spec_formulas(K, order):
    N = 12
    s = Schedule("decoupled", K, N, order)
    assert s.delays == [2 * (K - 1 - k) for k in range(K)]
    for t in range(s.num_ticks):
        for k in range(K):
            acts = s.actions(t, k)
            fwd = [a.batch for a in acts if a.op == "F"]
            bwd = [a.batch for a in acts if a.op == "B"]
            assert fwd == ([t - k] if 0 <= t - k < N else [])
            b = t - k - 2 * (K - 1 - k)
            assert bwd == ([b] if 0 <= b < N else [])


@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_locked_matches_spec_formulas(K):
    s = Schedule("locked", K, 9)
    assert s.delays == [K - 1 - k for k in range(K)]
    for t in range(s.num_ticks):
        for k in range(K):
            acts = s.actions(t, k)
            assert [a.batch for a in acts if a.op == "F"] == ([t] if t < 9 else [])
            b = t - (K - 1 - k)
            assert [a.batch for a in acts if a.op == "B"] == ([b] if 0 <= b < 9 else [])
            if any(a.op == "F" for a in acts):
                assert acts[0].op == "F", "forward-locked stages forward first"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("K", [1, 2, 3, 4])
@pytest.mark.parametrize("M", [1, 2, 3])
def test_every_schedule_validates(family, order, K, M):
    validate(Schedule(family, K, 7, order, M))


def test_validator_catches_a_backward_before_its_forward():
    class Broken(Schedule):
        def actions(self, t, k):
            acts = super().actions(t, k)
            return [Action("B", k, a.batch) if a.op == "F" and k == 1 else a for a in acts]
    with pytest.raises(ScheduleError, match="before its forward|deadlock|undone"):
        validate(Broken("decoupled", 2, 3))


def test_validator_catches_a_same_tick_message_in_the_decoupled_family():
    class SameTick(Schedule):  # stage 1 forwards batch t (not t-1): uses a message of the same tick
        def forward_tick(self, k, b):
            return b
    with pytest.raises(ScheduleError, match="deadlock"):
        validate(SameTick("decoupled", 2, 3))


def test_validator_catches_work_left_over():
    class Short(Schedule):
        @property
        def num_ticks(self):
            return super().num_ticks - 1
    with pytest.raises(ScheduleError, match="undone|never"):
        validate(Short("decoupled", 3, 4))


@pytest.mark.parametrize("order,expected", [("fb", [4, 2, 0]), ("bf", [3, 1, 0])])
def test_fdg_staleness(order, expected):
    s = Schedule("decoupled", 3, 30, order)
    assert [s.staleness(k, 15) for k in range(3)] == expected


@pytest.mark.parametrize("M,table", [
    (2, [[2, 2], [1, 1], [0, 0]]),              # ADL paper's staleness figure, K=3, mode A ("fb")
    (4, [[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]]),
])
def test_adl_staleness_figure(M, table):
    s = Schedule("decoupled", 3, 64, "fb", M)
    for k in range(3):
        assert [s.staleness(k, 8 * M + j) for j in range(M)] == table[k]
        assert [steady_staleness(s.delay(k), j, M) for j in range(M)] == table[k]


@pytest.mark.parametrize("family", ["bp", "local"])
def test_no_staleness_without_delay(family):
    s = Schedule(family, 4, 10)
    assert {s.staleness(k, b) for k in range(4) for b in range(10)} == {0}


def test_to_dict_is_json():
    d = Schedule("decoupled", 2, 3).to_dict()
    assert json.loads(json.dumps(d))["grid"][2] == [["B0", "U", "F2"], ["F1", "B1", "U"]]
    assert d["delay"] == [2, 0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(family="fdg", num_stages=2, num_batches=3), "unknown schedule family 'fdg'"),
    (dict(family="decoupled", num_stages=0, num_batches=3), "num_stages must be >= 1, got 0"),
    (dict(family="decoupled", num_stages=2, num_batches=3, order="xy"), "unknown order 'xy'"),
    (dict(family="decoupled", num_stages=2, num_batches=3, accumulate=0), "accumulate must be >= 1, got 0"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ScheduleError, match=match):
        Schedule(**kwargs)
