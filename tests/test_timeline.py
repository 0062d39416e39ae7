"""The timeline recorder, the Chrome trace and the Gantt chart, without processes."""
import json
import time

from torchdecoupled.timeline import Recorder, chrome_trace, idle, plot_gantt, write_chrome_trace


def _busy(ms):
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def _recorded():
    rec = Recorder()
    rec.tick = 0
    t0 = time.perf_counter_ns()
    _busy(20)
    w0 = time.perf_counter_ns()
    time.sleep(0.02)                        # blocked inside the action: not compute
    rec.wait("wait gradient of batch 0", w0, time.perf_counter_ns())
    rec.action("F", "F0", t0, time.perf_counter_ns())
    time.sleep(0.02)                        # between actions: idle
    return rec


def test_idle_fraction_counts_waits_and_gaps_but_not_evaluation():
    rec = _recorded()
    frac = rec.close_window()
    assert 0.5 < frac < 0.9, frac          # about 40 of 60 ms idle
    time.sleep(0.05)                        # an evaluation: excluded
    rec.open_window()
    t0 = time.perf_counter_ns()
    _busy(20)
    rec.action("B", "B0", t0, time.perf_counter_ns())
    assert rec.close_window() < 0.5
    assert 0.2 < rec.total_idle < 0.8       # 40 of about 80 ms over both windows
    assert idle(0, 0) == 0.0 and idle(5, 10) == 0.5


def test_chrome_trace_nests_waits_in_actions(tmp_path):
    rec = _recorded()
    trace = chrome_trace([rec.export(stage=1, replica=0, rank=2)])
    spans = {e["name"]: e for e in trace["traceEvents"] if e["ph"] == "X"}
    f, w = spans["F0"], spans["wait gradient of batch 0"]
    assert f["pid"] == 1 and f["tid"] == 2 and f["cat"] == "F" and w["cat"] == "wait"
    assert f["ts"] <= w["ts"] and w["ts"] + w["dur"] <= f["ts"] + f["dur"] + 1e-3
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    assert {"process_name", "thread_name"} <= {e["name"] for e in meta}
    write_chrome_trace(str(tmp_path / "t.json"), [rec.export(stage=1, replica=0, rank=2)])
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]


def test_recorder_keeps_a_bounded_number_of_events():
    rec = Recorder(limit=3)
    for i in range(10):
        rec.action("F", f"F{i}", i, i + 1)
    assert len(rec.events) == 3 and rec.export()["dropped"]
    assert rec.busy_ns == 10                # still counted in the idle fraction
    off = Recorder(enabled=False)
    off.action("F", "F0", 0, 5)
    assert off.events == [] and off.busy_ns == 5


def test_gantt_png(tmp_path):
    traces = [_recorded().export(stage=k, replica=0, rank=k) for k in range(2)]
    plot_gantt(str(tmp_path / "g.png"), traces)
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
