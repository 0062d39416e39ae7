"""The planner (torchdecoupled/plan): golden timings on hand-computable cases, memory against the stages' own
telemetry, the cut search, the cost file, the CLI's errors."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import torchdecoupled as td
from torchdecoupled.cli import main
from torchdecoupled.methods import get_method
from torchdecoupled.plan import costs as costs_mod
from torchdecoupled.plan.costs import Costs, LayerCost
from torchdecoupled.plan.events import simulate
from torchdecoupled.plan.links import Link, get_link
from torchdecoupled.plan.search import Setup, best_cut, evaluate
from torchdecoupled.schedule import Schedule

FREE = Link("free", float("inf"), 0.0)  # zero latency, infinite bandwidth


def unit(family, K, N, f=1.0, b=1.0, u=0.0, accumulate=1, order="bf"):
    s = Schedule(family, K, N, order, accumulate)
    return s, simulate(s, [{"F": f, "B": b, "U": u}] * K, [0] * K, FREE)


def layers(n, f=1.0, b=1.0, u=0.0, trainable=4, out=0):
    return [LayerCost(str(i), "L", f, b, u, trainable, trainable, out, 0, False, False) for i in range(n)]


def period(method, K, cs, **kw):
    return evaluate(Setup(cs, get_method(method, **kw.pop("opts", {})), K, kw.pop("link", FREE), **kw),
                    [1] if K == 2 else [])["period_s"]


# ---- golden timings ---------------------------------------------------------------------------------------

def test_bp_is_the_sum_of_every_stage():
    s, t = unit("bp", 2, 6)
    assert t.period(2, 4) == pytest.approx(4.0)  # F0 + F1 + B1 + B0, one batch at a time
    assert t.spans[0][:2] == [(0, "F0", 0.0, 1.0), (0, "B0", 3.0, 4.0)]
    assert t.spans[1][:2] == [(0, "F0", 1.0, 2.0), (0, "B0", 2.0, 3.0)]


def test_fdg_steady_tick_is_the_slowest_stage():
    s = Schedule("decoupled", 2, 12)
    t = simulate(s, [{"F": 1, "B": 1, "U": 0}] * 2, [0, 0], FREE)
    assert t.period(4, 8) == pytest.approx(2.0)
    # the hand-drawn timeline: stage 1 starts after F0 of stage 0; stage 0's B0 waits for stage 1's B0
    assert t.spans[0][:5] == [(0, "F0", 0, 1), (1, "F1", 1, 2), (2, "B0", 3, 4), (2, "U", 4, 4), (2, "F2", 4, 5)]
    assert t.spans[1][:3] == [(1, "F0", 1, 2), (1, "B0", 2, 3), (1, "U", 3, 3)]
    t = simulate(s, [{"F": 1, "B": 2, "U": 0}, {"F": 1, "B": 1, "U": 0}], [0, 0], FREE)
    assert t.period(4, 8) == pytest.approx(3.0)


def test_a_message_latency_delays_exactly_the_action_that_needs_it():
    s = Schedule("decoupled", 2, 1)
    t = simulate(s, [{"F": 1, "B": 1, "U": 0}] * 2, [1000, 1000], Link("slow", 1000.0, 0.5))  # 1.5 s each
    assert t.spans[0][0] == (0, "F0", 0.0, 1.0)
    assert t.spans[1][0] == (1, "F0", 2.5, 3.5)   # waits 1.5 s for the activation
    assert t.spans[1][1] == (1, "B0", 3.5, 4.5)   # no message: not delayed further
    assert t.spans[0][1] == (2, "B0", 6.0, 7.0)   # waits 1.5 s for the gradient


def test_adl_accumulating_two_halves_the_updates():
    fdg, adl = (unit("decoupled", 2, 20, u=1.0, accumulate=m)[1].period(4, 12) for m in (1, 2))
    assert fdg == pytest.approx(3.0)
    assert adl == pytest.approx(2.5)


def test_recompute_adds_a_forward_to_the_delayed_stage():
    cs = Costs(layers(2), 8, 0)
    assert period("fdg", 2, cs) == pytest.approx(2.0)
    assert period("dsp", 2, cs) == pytest.approx(3.0)  # stage 0: F + (F + B)


def test_replicas_add_the_ring_allreduce():
    cs = Costs(layers(2, trainable=10 ** 9), 8, 0)
    link = Link("1GB/s", 1e9, 0.0)
    assert link.allreduce(1e9, 2) == pytest.approx(1.0)  # 2 (D-1)/D x bytes / bandwidth
    assert period("fdg", 2, cs, link=link, replicas=2) == pytest.approx(3.0)
    assert Link("lat", 1e9, 1e-3).allreduce(0, 4) == pytest.approx(6e-3)  # 2 (D-1) latencies


def test_oversubscription_shares_the_cores():
    cs = Costs(layers(2), 8, 0)
    assert period("fdg", 2, cs, cores=2) == pytest.approx(2.0)
    assert period("fdg", 2, cs, cores=1) == pytest.approx(4.0)  # both stages on one core: their sum


def test_host_cpu_per_message_byte_adds_to_the_actions_that_send_or_receive():
    # 3 stages of one layer, each output 1e9 bytes, 1 ns of CPU per byte at each end: 1 s per message end
    cs = Costs(layers(3, out=10 ** 9), 8, 0)
    link = Link("cpu-copy", float("inf"), 0.0, 1e-9)
    from torchdecoupled.plan.profile import stage_costs
    work = [s.work for s in stage_costs(cs, get_method("fdg"), [1, 2], link)]
    #          F: act in + act out    B: grad in + grad out    U
    assert work == [{"F": 1 + 1, "B": 1 + 1, "U": 0.0},        # stage 0: sends up, receives the gradient
                    {"F": 1 + 2, "B": 1 + 2, "U": 0.0},        # stage 1: both neighbours
                    {"F": 1 + 1, "B": 1 + 1, "U": 0.0}]        # stage 2: receives, sends the gradient down
    ar = stage_costs(Costs(layers(2, trainable=10 ** 9), 8, 0), get_method("fdg"), [1], link, replicas=2)
    assert ar[0].work["U"] == pytest.approx(2 * 1e9 * 1e-9)  # the ring's bytes (1e9 for D = 2) sent and received
    assert get_link("gloo-local").cpu_per_byte > 0 and get_link("nvlink").cpu_per_byte == 0


def test_contention_slows_compute_when_processes_share_a_host():
    cs = Costs(layers(2), 8, 0)
    assert period("fdg", 2, cs, cores=2, contention=0.5) == pytest.approx(3.0)
    assert period("bp", 1, Costs(layers(1), 8, 0), cores=2, contention=0.5) == pytest.approx(2.0)  # one process: none
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="contention must be a fraction"):
        td.plan(model, torch.randn(2, 4), stages=2, contention=-1)


# ---- memory against the engine's telemetry ----------------------------------------------------------------

def tiny():
    torch.manual_seed(0)
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
    return nn.Sequential(block(3, 4), block(4, 6), block(6, 6), nn.Sequential(nn.Flatten(), nn.Linear(6 * 8 * 8, 10)))


@pytest.mark.parametrize("method,K", [("fdg", 2), ("fdg", 3), ("dsp", 3), ("adl", 3), ("ddg", 3), ("bp", 2)])
def test_stored_bytes_equal_the_stages_telemetry(method, K):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(10, (8,), generator=g)
    model = tiny()
    cuts = [1, 3] if K == 3 else [2]
    pipe = td.Pipeline(model, method=method, stages=K, boundaries=cuts,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))
    cs = costs_mod.measure(model, x, y, repeats=1)  # before training: the same shapes either way
    pipe.fit([(x, y)] * (2 * K + 2), epochs=1, progress=False)  # the planner replays 2K + 2 batches too
    mem = evaluate(Setup(cs, pipe.method, K, FREE), cuts)["memory"]
    assert [m["stored"] for m in mem] == [s.telemetry.peak_bytes for s in pipe.stages]
    assert any(m["stored"] for m in mem)


# ---- the cut search, the API ------------------------------------------------------------------------------

def test_best_cut_beats_or_equals_the_params_balance():
    # parameters say "cut after 1", time says "cut after 3": the search must find the time balance or better
    L = [LayerCost(str(i), "L", f, f, 0.0, p, p, 0, 0, False, False)
         for i, (f, p) in enumerate([(1, 100), (1, 1), (1, 1), (1, 1), (4, 1)])]
    setup = Setup(Costs(L, 8, 0), get_method("fdg"), 2, FREE)
    best, params = best_cut(setup)
    assert params["boundaries"] == [1] and params["period_s"] == pytest.approx(14.0)
    assert best["boundaries"] == [4] and best["period_s"] == pytest.approx(8.0)
    assert best["period_s"] <= params["period_s"]


def test_plan_api_on_a_small_sequential():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(10, (8,), generator=g)
    rs = td.plan(tiny(), x, y, stages=[1, 2], method=["fdg", "dsp"], repeats=1)
    assert [(r.method.split("(")[0], r.stages) for r in rs] == [("fdg", 1), ("fdg", 2), ("dsp", 1), ("dsp", 2)]
    for r in rs:
        assert r.period_s <= r.params_period_s * (1 + 1e-9)
        assert r.speedup == pytest.approx(r.bp_period_s / r.period_s)
        assert len(r.memory) == len(r.idle) == r.stages
    assert rs[0].speedup == pytest.approx(1.0, rel=0.2)  # K = 1 is BP, up to the measurement's noise


def test_cost_file_round_trip_and_scaling(tmp_path):
    cs = Costs(layers(3, out=100), 8, 64, 5, note="x")
    path = costs_mod.save(cs, str(tmp_path / "c.json"))
    back = costs_mod.load(path)
    assert back.layers == cs.layers and back.batch == 8 and back.input_bytes == 64
    half = back.at_batch(4)
    assert half.layers[0].forward_s == 0.5 and half.layers[0].out_bytes == 50 and half.layers[0].param_bytes == 4


def test_links():
    assert get_link("nvlink").bandwidth == 150e9
    assert get_link("25,10") == Link("25,10", 25e9, 1e-5)
    with pytest.raises(ValueError, match="unknown link 'fast'"):
        get_link("fast")


# ---- the command line -------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,msg", [
    (["--stages", "3-1"], "bad --stages '3-1'"),
    (["--stages", "x"], "bad --stages 'x'"),
    (["--link", "warp"], "unknown link 'warp'"),
    (["--costs", "/nonexistent/c.json"], "cost file '/nonexistent/c.json' not found"),
    (["--costs", "GARBAGE"], "is not JSON"),
    (["--costs", "WRONG"], "is not a cost file"),
])
def test_cli_errors_are_one_line_exit_2(extra, msg, tmp_path, capsys):
    (tmp_path / "g.json").write_text("{not json")
    (tmp_path / "w.json").write_text(json.dumps({"layers": []}))
    extra = [e.replace("GARBAGE", str(tmp_path / "g.json")).replace("WRONG", str(tmp_path / "w.json")) for e in extra]
    assert main(["plan", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_cli_table_and_outputs_from_a_cost_file(tmp_path, capsys):
    model, x, y = td.plan.zoo_inputs("cnn2d", "digits", 16)
    cs = costs_mod.measure(model, x, y, repeats=1, model_name="cnn2d")
    path = costs_mod.save(cs, str(tmp_path / "c.json"))
    out = tmp_path / "o"
    assert main(["plan", "--model", "cnn2d", "--dataset", "digits", "--batch-size", "16", "--stages", "1-2",
                 "--method", "fdg,dsp", "--costs", path, "--link", "10gbe", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "speed-up" in text and "dsp" in text
    saved = json.loads((out / "plan.json").read_text())
    assert [r["stages"] for r in saved["results"]] == [1, 2, 1, 2]
    assert (out / "plan.png").stat().st_size > 1000


def test_flop_costs_are_flops_over_the_throughput_scaled_to_the_batch():
    from torchdecoupled.compensate import layer_flops
    from torchdecoupled.plan.flops import flop_costs
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 8, 8, generator=g), torch.randint(10, (2,), generator=g)
    model = tiny()
    cs = flop_costs(model, x, y, 8, 1e9)
    ref = layer_flops(list(model), x)
    assert [c.forward_s for c in cs.layers] == pytest.approx([4 * f / 1e9 for f, _ in ref])
    assert [c.backward_s for c in cs.layers] == pytest.approx([4 * b / 1e9 for _, b in ref])
    assert cs.batch == 8 and cs.layers[0].out_bytes == 4 * 2 * 4 * 8 * 8 * 4


def test_period_max_is_the_bottleneck_mean_is_the_benchmarks_figure():
    s = Schedule("decoupled", 3, 40)
    t = simulate(s, [{"F": 2, "B": 2, "U": 0}, {"F": 1, "B": 1, "U": 0}, {"F": 1, "B": 1, "U": 0}], [0] * 3, FREE)
    assert t.period(30, 6, "max") == pytest.approx(4.0)  # stage 0's F + B, long after the fill
    assert t.period(6, 6, "mean") <= t.period(6, 6, "max")
