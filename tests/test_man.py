"""MAN (methods/man.py, heads/man.py): the parameter message drawn and validated, the EMA follows the table,
LB is a trainable copy and the EMA has no gradients, the pipeline equals a sequential MAN loop, identity
aux input equals DGL, dist equals the simulator, resume is bit-exact."""
import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from checkpoint_cases import keep_each_checkpoint
from conftest import assert_same_params, tiny_data, tiny_model
from dist_cases import sim, tiny_cfg
from torchdecoupled import checkpoint, schedule as sched_mod
from torchdecoupled.cli import main
from torchdecoupled.data import load_dataset
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.heads import HEADS, stage_head
from torchdecoupled.heads.man import MANHead, first_layer, first_layer_params, man_head
from torchdecoupled.methods import get_method
from torchdecoupled.metrics import params_sha256
from torchdecoupled.run import train
from torchdecoupled.schedule import Schedule, ScheduleError, format_grid, messages_sent, param_needed, validate
from torchdecoupled.stage import Stage
from torchdecoupled.transport import LocalTransport

CUTS = {2: [4], 3: [2, 4]}
GRID = """\
tick    0         1         2         3         4         5         6
stage0  F0 B0 U0  F1 B1 U1  F2 B2 U2  F3 B3 U3  F4 B4 U4
stage1            F0 B0 U0  F1 B1 U1  F2 B2 U2  F3 B3 U3  F4 B4 U4
stage2                      F0 B0 U0  F1 B1 U1  F2 B2 U2  F3 B3 U3  F4 B4 U4
delay d_k = [0, 0, 0]   (local, parameters down after U (MAN))"""
# (key, tick sent, consumer action, tick used): the table in methods/man.py, drawn by hand
PARAMS = [(("param", 1, 0, 0), 1, "F2", 2), (("param", 1, 0, 1), 2, "F3", 3), (("param", 1, 0, 2), 3, "F4", 4),
          (("param", 2, 1, 0), 2, "F2", 3), (("param", 2, 1, 1), 3, "F3", 4), (("param", 2, 1, 2), 4, "F4", 5)]


# ---- the schedule ---------------------------------------------------------------------------------
def test_the_grid_and_the_parameter_messages_are_the_drawn_ones():
    s = Schedule("local", 3, 5, params=True)
    validate(s)
    assert "\n".join(line.rstrip() for line in format_grid(s).splitlines()) == GRID
    sent = {key: t for t in range(s.num_ticks) for k in range(3) for a in s.actions(t, k)
            for key in messages_sent(s, a) if key[0] == "param"}
    used = {param_needed(s, a): (str(a), t) for t in range(s.num_ticks) for k in range(3) for a in s.actions(t, k)
            if param_needed(s, a) is not None}
    assert sorted((key, sent[key], *used[key]) for key in sent) == PARAMS
    assert set(sent) == set(used)
    assert Schedule("local", 3, 5).actions(2, 0)[-1].batch is None  # other local methods: U stays unnamed


@pytest.mark.parametrize("K,N", [(1, 3), (2, 1), (2, 2), (4, 7), (8, 20)])
def test_validate_proves_parameter_schedules_deadlock_free(K, N):
    validate(Schedule("local", K, N, params=True))


def test_validate_finds_a_parameter_message_used_in_the_tick_it_is_sent(monkeypatch):
    """If F of batch b took stage k+1's update of batch b-1 (sent in the same tick), the dry run must fail."""
    def same_tick(schedule, a):
        if schedule.params and a.op == "F" and a.stage < schedule.num_stages - 1 and a.batch >= 1:
            return ("param", a.stage + 1, a.stage, a.batch - 1)
        return None

    monkeypatch.setattr(sched_mod, "param_needed", same_tick)
    with pytest.raises(ScheduleError, match="deadlock"):
        validate(Schedule("local", 3, 6, params=True))


def test_parameter_messages_need_the_local_family():
    with pytest.raises(ScheduleError, match="local family"):
        Schedule("decoupled", 3, 6, params=True)
    assert get_method("man").param_messages and not get_method("dgl").param_messages
    with pytest.raises(ValueError, match="MAN head"):
        get_method("man", head="dgl")


# ---- the head -------------------------------------------------------------------------------------
def man_parts(K, momentum=0.5, inner="dgl", seed=0):
    model = tiny_model(seed)
    edges = [0, *CUTS[K], len(model)]
    mods = [model[edges[k]:edges[k + 1]] for k in range(K)]
    heads = []
    for k in range(K - 1):
        torch.manual_seed(10 + k)
        heads.append(man_head((8,), 3, (6,), stage=k, num_stages=K, modules=mods, inner=inner,
                              momentum=momentum).double())
    return model, mods, heads


def pipeline(method, mods, heads, N, per_epoch=6):
    K = len(mods)
    schedule = Schedule(method.family, K, N, params=method.param_messages)
    stages = []
    for k, m in enumerate(mods):
        head = heads[k] if k < K - 1 else None
        params = list(m.parameters()) + (list(head.parameters()) if head is not None else [])
        stages.append(Stage(k, schedule, method, m, torch.optim.SGD(params, lr=0.1, momentum=0.9), head=head,
                            batches_per_epoch=per_epoch))
    return stages, schedule


def test_lb_is_a_trainable_copy_and_the_ema_has_no_gradient_and_no_optimizer_state():
    model, mods, heads = man_parts(2)
    layer = first_layer(mods[1])
    assert layer is mods[1][0]
    head = heads[0]
    for p, q, r in zip(head.lb.parameters(), head.ema.parameters(), layer.parameters()):
        assert torch.equal(p, r) and torch.equal(q, r) and p is not r and q is not r
        assert p.requires_grad and not q.requires_grad
    stages, schedule = pipeline(get_method("man"), mods, heads, 6)
    lb0 = [p.detach().clone() for p in head.lb.parameters()]
    run_sim(stages, schedule, tiny_data())
    assert all(not torch.equal(p, q) for p, q in zip(head.lb.parameters(), lb0))  # LB trained
    state = stages[0].optimizer.state
    assert all(p in state for p in head.lb.parameters())
    assert all(p not in state and p.grad is None for p in head.ema.parameters())
    h = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    head.loss(h, torch.arange(8) % 3, None).backward()
    assert h.grad is not None and all(p.grad is None for p in head.ema.parameters())  # through the EMA into h


def test_the_ema_follows_the_drawn_table_bit_for_bit():
    """psi used for batch b: psi_0 = psi_1 = theta^(0); psi_b = m psi_(b-1) + (1 - m) theta^(b-1), theta^(j)
    stage 1's first layer after j updates (recorded here), m = 0.5 so every step shows."""
    model, mods, heads = man_parts(2, momentum=0.5)
    stages, schedule = pipeline(get_method("man"), mods, heads, 7)
    head, used, theta = heads[0], [], [[p.detach().clone() for p in first_layer_params(mods[1])]]
    real_loss, real_update = head.loss, stages[1].update

    def loss(h, y, x0):
        used.append([p.detach().clone() for p in head.ema.parameters()])
        return real_loss(h, y, x0)

    def update():
        real_update()
        theta.append([p.detach().clone() for p in first_layer_params(mods[1])])

    head.loss, stages[1].update = loss, update
    run_sim(stages, schedule, tiny_data())
    assert len(used) == 7 and len(theta) == 8
    want = [theta[0], theta[0]]
    for b in range(2, 7):
        want.append([p * 0.5 + t * (1 - 0.5) for p, t in zip(want[-1], theta[b - 1])])
    for b in range(7):
        assert all(torch.equal(u, w) for u, w in zip(used[b], want[b])), f"batch {b}"
    assert not all(torch.equal(u, w) for u, w in zip(used[3], want[2]))  # it does move


def man_loop(mods, heads, batches, N, m):
    """The oracle: MAN's sequential algorithm, each batch through every stage in turn, stage k's EMA folding in
    stage k+1's first layer after b-1 updates before batch b >= 2 (the pipeline's table)."""
    K = len(mods)
    opts = [torch.optim.SGD(list(mod.parameters()) + (list(heads[k].parameters()) if k < K - 1 else []), lr=0.1,
                            momentum=0.9) for k, mod in enumerate(mods)]
    hist = [[[p.detach().clone() for p in first_layer(mod).parameters()]] for mod in mods]
    for b in range(N):
        x, y = batches.get(b)
        h = x
        for k, mod in enumerate(mods):
            if k < K - 1 and b >= 2:
                with torch.no_grad():
                    for p, t in zip(heads[k].ema.parameters(), hist[k + 1][b - 1]):
                        p.copy_(p * m + t * (1 - m))
            out = mod(h.detach())
            loss = heads[k].loss(out, y, x) if k < K - 1 else nn.functional.cross_entropy(out, y)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            hist[k].append([p.detach().clone() for p in first_layer(mod).parameters()])
            h = out


@pytest.mark.parametrize("K,inner", [(2, "dgl"), (3, "dgl"), (3, "infopro")])
def test_the_pipeline_equals_the_sequential_man_loop_bit_for_bit(K, inner):
    model, mods, heads = man_parts(K, momentum=0.7, inner=inner)
    o_model, o_mods, o_heads = copy.deepcopy((model, mods, heads))
    stages, schedule = pipeline(get_method("man", head=f"man_{inner}"), mods, heads, 12)
    run_sim(stages, schedule, tiny_data())
    man_loop(o_mods, o_heads, tiny_data(), 12, 0.7)
    assert_same_params(model, o_model)
    for h, o in zip(heads, o_heads):
        assert_same_params(h, o)


def test_with_h_as_the_aux_input_man_is_dgl_exactly(monkeypatch):
    """y replaced by h: the EMA moves but nothing reads it, LB gets no gradient: MAN's pipeline is DGL's with
    the same inner heads, bit for bit; and m = 1 keeps the EMA at the copy."""
    model, mods, heads = man_parts(3, momentum=1.0)
    d_model, d_mods = copy.deepcopy((model, mods))
    dgl_heads = [copy.deepcopy(h.inner) for h in heads]
    ema0 = [[p.clone() for p in h.ema.parameters()] for h in heads]
    monkeypatch.setattr(MANHead, "aux_input", lambda self, h: h)
    run_sim(*pipeline(get_method("man"), mods, heads, 12), tiny_data())
    run_sim(*pipeline(get_method("dgl"), d_mods, dgl_heads, 12), tiny_data())
    assert_same_params(model, d_model)
    for h, d, e in zip(heads, dgl_heads, ema0):
        assert_same_params(h.inner, d)
        assert all(torch.equal(p, q) for p, q in zip(h.ema.parameters(), e))


def test_bad_input_is_refused_in_one_line():
    model, mods, heads = man_parts(2)
    with pytest.raises(ValueError, match="modules="):
        HEADS["man_dgl"]((8,), 3, (6,), stage=0, num_stages=2)
    with pytest.raises(ValueError, match="momentum"):
        man_head((8,), 3, (6,), modules=mods, momentum=1.5)
    with pytest.raises(ValueError, match="EMA holds"):
        heads[0].receive_next([torch.zeros(3)])
    with pytest.raises(ValueError, match="no parameters|none"):
        first_layer(nn.Sequential(nn.Tanh()))
    h = stage_head("man_infopro", mods, 0, torch.randn(4, 6, dtype=torch.float64), 3)
    assert isinstance(h, MANHead) and h.momentum == 0.995


# ---- resume and the distributed engine -------------------------------------------------------------
def digest(stages):
    return params_sha256([nn.ModuleList([s.module] + ([s.head] if s.head is not None else [])) for s in stages])


def test_resume_after_any_tick_is_bit_exact(tmp_path):
    path, method = str(tmp_path / "checkpoint.pt"), get_method("man")

    def fresh():
        return pipeline(method, *man_parts(3, momentum=0.7)[1:], 10)

    stages, schedule = fresh()
    run_sim(stages, schedule, tiny_data())
    want, wrong, carried = digest(stages), [], 0
    for t in range(schedule.num_ticks - 1):
        stages, schedule = fresh()
        transport = LocalTransport()
        run_sim(stages, schedule, tiny_data(), transport=transport, ticks=range(t + 1))
        carried += sum(key[0] == "param" for key in transport.box)
        checkpoint.save(path, stages, transport, t, [], {})
        stages, schedule = fresh()
        transport = LocalTransport()
        last, _ = checkpoint.load(path, stages, transport)
        run_sim(stages, schedule, tiny_data(), transport=transport, ticks=range(last + 1, schedule.num_ticks))
        if digest(stages) != want:
            wrong.append(t)
    assert wrong == [] and carried > 0


@pytest.fixture(scope="module")
def mnist1d():
    load_dataset("mnist1d")


@pytest.mark.parametrize("K,kw", [(2, {}), (3, {}),
                                  (3, {"dtype": "float32", "model": "cnn1d_bn", "model_opts": {},
                                       "method_opts": {"head": "man_infopro"}})])
def test_dist_equals_the_simulator(mnist1d, K, kw):
    cfg = tiny_cfg("man", K, **kw)
    assert train(cfg)["params_sha256"] == sim(cfg)["params_sha256"]


def test_resume_mid_run_in_either_engine_is_bit_exact(mnist1d, tmp_path, monkeypatch):
    """A simulator run stopped after epoch 0 (a parameter message in flight at every boundary) resumes to
    the uninterrupted run, in the simulator and under --engine dist."""
    after = keep_each_checkpoint(monkeypatch)
    cfg = tiny_cfg("man", 3, checkpoint=True, out=str(tmp_path / "a"))
    whole = sim(cfg, out=cfg.out)
    stopped = after(tmp_path / "a", 0)
    msgs = checkpoint.read(checkpoint.in_dir(stopped))["replicas"][0]["messages"]
    assert sorted(k[:3] for k in msgs if k[0] == "param") == [("param", 1, 0), ("param", 2, 1)]
    again = sim(cfg, out=str(tmp_path / "b"), resume=stopped)
    dist = train(dataclasses.replace(cfg, out=str(tmp_path / "c"), resume=stopped, checkpoint=False))
    assert again["params_sha256"] == whole["params_sha256"] == dist["params_sha256"]


def test_the_cli_draws_and_trains_man(mnist1d, tmp_path, capsys):
    assert main(["schedule", "--method", "man", "--stages", "3", "--batches", "5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["params"] is True and d["grid"][2][0] == ["F2", "B2", "U2"]


def test_a_man_head_under_another_local_method_is_refused():
    from torchdecoupled.methods import get_method
    for method in ("dgl", "local"):
        with pytest.raises(ValueError, match="only method 'man' sends: use --method man --head man_dgl"):
            get_method(method, head="man_dgl")
