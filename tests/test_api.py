"""The Python API: a user's own nn.Sequential, optimizer, scheduler and DataLoader."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchdecoupled as td
from conftest import assert_same_params, plain_loop, tiny_data, tiny_model


def test_pipeline_bp_equals_plain_loop():
    data = tiny_data()
    model = tiny_model()
    pipe = td.Pipeline(model, "bp", 3, boundaries=[2, 4],
                       optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    batches = [data.get(b) for b in range(data.per_epoch)]
    pipe.fit(batches, epochs=2)
    assert_same_params(model, plain_loop(2 * data.per_epoch))


def test_pipeline_with_dataloader_adam_and_scheduler_learns():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    y = (x[:, 0] > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    pipe = td.Pipeline(model, "fdg", 2, beta=0.5, optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-2),
                       scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.9))
    before = pipe.evaluate(x, y)["test_acc"]
    pipe.fit(loader, epochs=5)
    after = pipe.evaluate(x, y)
    assert after["test_acc"] > 0.9 > before or after["test_acc"] > before + 0.2
    assert pipe.stages[0].optimizer.param_groups[0]["lr"] < 1e-2  # the scheduler stepped


def test_loader_batches_reiterates_per_epoch_and_releases():
    epochs_started = []

    class Loader:
        def __len__(self):
            return 3

        def __iter__(self):
            epochs_started.append(1)
            return iter([(torch.full((2, 1), float(i)), torch.tensor([i, i])) for i in range(3)])

    lb = td.data.loader.LoaderBatches(Loader())
    assert lb.get(4)[1].tolist() == [1, 1] and len(epochs_started) == 2
    assert lb.get(2)[1].tolist() == [2, 2]
    lb.release_before(4)
    assert sorted(lb.cache) == [4]


# ---- local learning (dgl, infopro, local): auxiliary heads from the Python API -------------------------

def sgd(ps):
    return torch.optim.SGD(ps, lr=0.1, momentum=0.9)


def state(stages):
    """Every tensor a run ends with: stage weights and buffers, then head weights and buffers."""
    return [t for s in stages for part in (s.module, s.head) if part is not None for t in part.state_dict().values()]


@pytest.mark.parametrize("method,opts", [("dgl", {}), ("infopro", {}), ("local", {"head": "linear"})])
def test_local_pipeline_learns_and_equals_the_cli_run_bit_for_bit(method, opts):
    from torchdecoupled.build import build_run, build_stage, make_optimizer, make_scheduler
    from torchdecoupled.config import RunConfig
    from torchdecoupled.data.batches import Batches
    from torchdecoupled.engines.sim import run_sim
    from torchdecoupled.models import build_model
    run = build_run(RunConfig(method=method, method_opts=opts, stages=3, dataset="digits", model="mlp", epochs=2,
                              progress=False))
    cli = [build_stage(run, k) for k in range(3)]
    run_sim(cli, run.schedule, run.batches)

    cfg, data = run.config, run.dataset
    torch.manual_seed(cfg.seed)
    model = build_model("mlp", 10, (1, 8, 8))  # the user's own model: the same weights as the CLI's
    sample = {"sample": data.train_x[:5]} if method == "local" else {}  # else sized by fit's first batch
    pipe = td.Pipeline(model, method, 3, num_classes=10, optimizer=lambda ps: make_optimizer(cfg, ps),
                       scheduler=lambda opt: make_scheduler(cfg, opt), seed=cfg.seed, **opts, **sample)
    before = pipe.evaluate(data.test_x, data.test_y)
    pipe.fit(Batches(data.train_x, data.train_y, cfg.batch_size, cfg.seed), epochs=2)
    after = pipe.evaluate(data.test_x, data.test_y)

    assert [type(s.head).__name__ for s in pipe.stages] == [type(s.head).__name__ for s in cli]
    a, b = state(pipe.stages), state(cli)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert after["test_loss"] < before["test_loss"] / 2 and after["test_acc"] > 0.8


@pytest.mark.parametrize("method", ["dgl", "infopro", "local"])
def test_local_with_one_stage_equals_bp(method):
    data = tiny_data()
    model = tiny_model()
    pipe = td.Pipeline(model, method, 1, num_classes=3, optimizer=sgd)
    pipe.fit([data.get(b) for b in range(data.per_epoch)], epochs=2)
    assert pipe.stages[0].head is None
    assert_same_params(model, plain_loop(2 * data.per_epoch))


def test_no_gradient_reaches_the_previous_stage():
    """Scaling the last stage's loss moves the last stage only; under FDG it moves stage 0 as well."""
    data = tiny_data()
    batches = [data.get(b) for b in range(data.per_epoch)]

    def stage0(method, scale, **kw):
        pipe = td.Pipeline(tiny_model(), method, 2, boundaries=[4], optimizer=sgd,
                           criterion=lambda out, y: scale * nn.functional.cross_entropy(out, y), **kw)
        pipe.fit(batches, epochs=2)
        return [p.detach().clone() for p in pipe.stages[0].module.parameters()], pipe.stages[1].module

    a, last_a = stage0("local", 1.0, num_classes=3)
    b, last_b = stage0("local", 100.0, num_classes=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(last_a[0].weight, last_b[0].weight)
    c, _ = stage0("fdg", 1.0)
    d, _ = stage0("fdg", 100.0)
    assert not all(torch.equal(x, y) for x, y in zip(c, d))


def test_head_factory_is_called_once_per_stage_and_trained_by_the_stage_optimizer():
    from torchdecoupled.heads import LinearHead
    calls = []

    def factory(k, feature_shape, num_classes, input_shape):
        calls.append((k, feature_shape, num_classes, input_shape))
        return LinearHead(feature_shape, num_classes)

    data = tiny_data()
    pipe = td.Pipeline(tiny_model(), "infopro", 3, boundaries=[2, 4], num_classes=3, head=factory, optimizer=sgd)
    assert pipe.stages == [] and calls == []  # no sample: the heads wait for the first batch
    pipe.fit([data.get(b) for b in range(data.per_epoch)], epochs=1)
    assert calls == [(0, (8,), 3, (6,)), (1, (8,), 3, (6,))]
    for s in pipe.stages[:2]:
        assert isinstance(s.head, LinearHead) and s.head.fc.weight.dtype == torch.float64  # the features' dtype
        held = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
        assert {id(p) for p in s.head.parameters()} <= held
        assert s.optimizer.state[s.head.fc.weight]["momentum_buffer"].abs().sum() > 0  # trained
    assert pipe.stages[2].head is None


def test_heads_are_sized_by_sample_or_by_the_first_data_alike():
    data = tiny_data()
    x, _ = data.get(0)
    with_sample = td.Pipeline(tiny_model(), "dgl", 3, boundaries=[2, 4], num_classes=3, optimizer=sgd, sample=x)
    lazy = td.Pipeline(tiny_model(), "dgl", 3, boundaries=[2, 4], num_classes=3, optimizer=sgd)
    lazy.predict(x[:1])  # any input sizes them: they depend on its shape only
    assert all(torch.equal(p, q) for p, q in zip(state(with_sample.stages), state(lazy.stages)))


def test_local_learning_errors_name_the_value_and_the_fix():
    from torchdecoupled.heads import LinearHead

    def make(method="dgl", **kw):
        kw.setdefault("num_classes", 3)
        return td.Pipeline(tiny_model(), method, 3, boundaries=[2, 4], optimizer=sgd, sample=tiny_data().x, **kw)

    with pytest.raises(ValueError, match=r"method 'dgl' .* pass num_classes="):
        make(num_classes=None)
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2 \(got 1\)"):
        make(num_classes=1)
    with pytest.raises(ValueError, match=r"unknown head 'mlp' \(valid: auglocal, dgl, infopro, linear, lm, lm_frozen, man_dgl, man_infopro; add your own"):
        make(head="mlp")
    with pytest.raises(ValueError, match=r"method 'infopro' takes no option 'head'"):
        make("infopro", head="linear")
    with pytest.raises(ValueError, match=r"head=LinearHead\(...\) is one module.*head=lambda k, feature_shape"):
        make(head=LinearHead((8,), 3))
    with pytest.raises(TypeError, match=r"head must be a name .* \(got int\)"):
        make(head=3)
    with pytest.raises(ValueError, match=r"method 'fdg' has no auxiliary heads: head= is for .*dgl, infopro, local"):
        make("fdg", head=lambda *a: LinearHead(a[1], 3))
    with pytest.raises(TypeError, match=r"returned Linear for stage 0; it must return a torchdecoupled.heads.AuxHead"):
        make(head=lambda k, fs, nc, ins: nn.Linear(fs[0], nc))
    shared = LinearHead((8,), 3)
    with pytest.raises(ValueError, match=r"the same head for stages 0 and 1"):
        make(head=lambda *a: shared)
    td.Pipeline(tiny_model(), "fdg", 2, optimizer=sgd, num_classes=3)  # num_classes: ignored where no heads


def test_fit_twice_keeps_one_predictor_per_stage():
    data = tiny_data()
    batches = [data.get(b) for b in range(data.per_epoch)]
    pipe = td.Pipeline(tiny_model(), "dtrp", 3, boundaries=[2, 4], optimizer=sgd, predictor="delta")
    pipe.fit(batches, epochs=1)
    first = pipe.stages[0].predictor
    pipe.fit(batches, epochs=1)
    p = pipe.stages[0].predictor
    assert p is first and p.stage is pipe.stages[0] and len(p._handles) == 2  # no stale optimizer hooks
    assert p.steps == 2 * data.per_epoch


# ---- one training path: the CLI's run and a user's Pipeline; schedulers per step; data forms -----------

def test_a_users_pipeline_on_the_dist_engine_equals_the_cli_run():
    """The zoo's model and data through td.Pipeline (engine="dist", the user's own factories) and through
    the CLI's train (engine="sim"): the same weights."""
    from torchdecoupled.config import RunConfig
    from torchdecoupled.data import load_dataset
    from torchdecoupled.data.batches import Batches
    from torchdecoupled.models import build_model
    cfg = RunConfig(method="fdg", stages=2, dataset="mnist1d", model="mlp", model_opts={"hidden": (32, 32, 32)},
                    epochs=2, batch_size=400, lr=0.1, dtype="float64", lr_schedule="cosine", progress=False)
    summary = td.train(cfg)
    data = load_dataset("mnist1d")
    torch.manual_seed(0)
    model = build_model("mlp", 10, data.in_shape, hidden=(32, 32, 32)).double()
    pipe = td.Pipeline(model, "fdg", 2, engine="dist", timeout=30,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
                       scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=2))
    history = pipe.fit(Batches(data.train_x.double(), data.train_y, 400, 0), epochs=2, progress=False,
                       val_data=(data.test_x.double(), data.test_y))
    assert pipe.summary(history)["params_sha256"] == summary["params_sha256"]
    assert history[-1]["test_acc"] == summary["test_acc"] and "idle_fraction" in history[-1]


def test_train_can_be_called_again_in_one_process():
    from torchdecoupled.config import RunConfig
    cfg = RunConfig(method="bp", stages=2, dataset="digits", model="mlp", epochs=1, progress=False)
    assert td.train(cfg)["params_sha256"] == td.train(cfg)["params_sha256"]


def test_a_per_step_one_cycle_ends_where_a_plain_loop_does():
    data = tiny_data()
    steps = 3 * data.per_epoch

    def sched(o):
        return torch.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=steps)

    model = tiny_model()
    pipe = td.Pipeline(model, "bp", 1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                       scheduler=sched, scheduler_interval="step")
    history = pipe.fit([data.get(b) for b in range(data.per_epoch)], epochs=3, progress=False)
    plain = tiny_model()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    s = sched(opt)
    for b in range(steps):
        x, y = data.get(b)
        nn.functional.cross_entropy(plain(x), y).backward()
        opt.step()
        opt.zero_grad()
        s.step()
    assert history[-1]["lr"] == [opt.param_groups[0]["lr"]] and opt.param_groups[0]["lr"] < 0.01  # from 0.5
    assert_same_params(model, plain)


def test_a_dataset_with_batch_size_and_dict_batches():
    x = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return {"pixels": x[i], "label": y[i]}

    def pipe():
        return td.Pipeline(tiny_model(classes=2), "fdg", 2, batch_keys=("pixels", "label"),
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    a, b = pipe(), pipe()
    a.fit(Dicts(), epochs=2, batch_size=8, progress=False)
    b.fit(DataLoader(Dicts(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)), epochs=2,
          progress=False)  # a Dataset is shuffled by a generator seeded with the pipeline's seed
    assert all(torch.equal(p, q) for p, q in zip(a.modules[0].parameters(), b.modules[0].parameters()))
    with pytest.raises(ValueError, match=r"batch_keys=\('pixels', 'label'\) names 'pixels'"):
        pipe().fit([{"x": x[:8], "y": y[:8]}], progress=False)
    with pytest.raises(ValueError, match="pass batch_size= too"):
        pipe().fit(Dicts(), progress=False)


def test_a_parameter_tied_across_stages_is_refused():
    shared = nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"parameter '0.weight' of stage 0 is also '2.weight' of stage 1: a tied"):
        td.Pipeline(nn.Sequential(shared, nn.Tanh(), shared), "fdg", 2, boundaries=[2],
                    optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    td.Pipeline(nn.Sequential(shared, nn.Tanh(), shared), "fdg", 1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


def test_an_optimizer_over_other_parameters_is_refused():
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"the optimizer of stage 0 holds 2 parameter\(s\) that are not the stage's"):
        td.Pipeline(tiny_model(), "fdg", 2, optimizer=lambda p: torch.optim.SGD(other.parameters(), lr=0.1))


def test_a_label_outside_the_classes_names_the_stage_and_the_batch():
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.full((8,), 7)
    pipe = td.Pipeline(tiny_model(), "fdg", 2, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    with pytest.raises(ValueError, match=r"stage 1: the criterion failed on batch 0 \(outputs \(8, 3\) float64, "
                                         r"targets \(8,\) int64 in \[7, 7\]\): IndexError: Target 7 is out of bounds"):
        pipe.fit([(x, y)], progress=False)
