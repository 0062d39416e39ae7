"""Delay-aware optimizers: nag-async (Ajanthan et al. 2025) and PipeMare's learning-rate correction (Yang et
al. 2021), the StageInfo a stage-aware factory receives, and PACI's Delta in the epoch records.

Oracles: torch's own NAdam / AdamW in a plain loop (delay 0), hand-computed tables of the per-stage rates and
momenta, the checkpointed run resumed, the distributed engine, and update counts read off the drawn grid."""
import json

import pytest
import torch
from torch import nn

from checkpoint_cases import keep_each_checkpoint
from conftest import assert_same_params, tiny_data, tiny_model
from dist_cases import sim, tiny_cfg
from torchdecoupled import Pipeline, StageInfo, checkpoint
from torchdecoupled.build import build_run, build_stage
from torchdecoupled.cli import main
from torchdecoupled.config import RunConfig
from torchdecoupled.data import load_dataset
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.methods import get_method
from torchdecoupled.optim import nag_async, pipemare, stage_info, versions
from torchdecoupled.optim.pipemare import parse_correction
from torchdecoupled.partition import split
from torchdecoupled.run import train
from torchdecoupled.schedule import Schedule, eval_ticks
from torchdecoupled.stage import Stage

NADAM = dict(betas=(0.99, 0.999), momentum_decay=0.004, weight_decay=0.01, decoupled_weight_decay=True)


def plain(make_opt, num_batches=14):
    """The oracle: an ordinary PyTorch loop over the tiny data."""
    batches, model = tiny_data(), tiny_model()
    opt = make_opt(model.parameters())
    for b in range(num_batches):
        x, y = batches.get(b)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model


def piped(method, K, make_opt, epochs=2):
    model = tiny_model()
    pipe = Pipeline(model, method, K, optimizer=make_opt, boundaries=[2, 4, 6][:K - 1] if K > 1 else None)
    pipe.fit(tiny_data(), epochs=epochs, progress=False)  # 6 batches per epoch
    return model, pipe


# ---- delay 0: the optimizers are torch's -------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 2])
def test_nag_async_without_delay_is_torchs_nadam(K):
    model, _ = piped("bp", K, lambda p, stage: nag_async(p, lr=0.01, stage=stage))
    assert_same_params(model, plain(lambda p: torch.optim.NAdam(p, lr=0.01, **NADAM), 12))


def test_a_recomputing_stage_without_delay_gets_the_base_momentum():
    model, _ = piped("dsp", 1, lambda p, stage: nag_async(p, lr=0.01, stage=stage, momentum=0.8))
    assert_same_params(model, plain(lambda p: torch.optim.NAdam(p, lr=0.01, **{**NADAM, "betas": (0.8, 0.999)}),
                                    12))


@pytest.mark.parametrize("K", [1, 2])
def test_pipemare_without_delay_changes_nothing(K):
    adamw = lambda p: torch.optim.AdamW(p, lr=0.01)  # noqa: E731
    model, _ = piped("bp", K, lambda p, stage: pipemare(adamw(p), 100, stage=stage))
    assert_same_params(model, plain(adamw, 12))


# ---- what each stage is told, and runs at -------------------------------------------------------------

def test_versions_per_family():
    table = {("decoupled", "bf", 1, 4): [6, 4, 2, 1], ("decoupled", "fb", 1, 4): [7, 5, 3, 1],
             ("locked", "bf", 1, 4): [4, 3, 2, 1], ("bp", "bf", 1, 4): [1, 1, 1, 1], ("local", "bf", 1, 4): [1] * 4,
             ("decoupled", "fb", 2, 3): [3, 2, 1], ("decoupled", "fb", 4, 3): [2, 2, 1]}  # ADL's figure + 1
    for (family, order, M, K), want in table.items():
        s = Schedule(family, K, 5, order, M)
        assert [versions(s, k) for k in range(K)] == want, (family, order, M)


def test_a_factory_with_stage_gets_each_stages_info():
    seen = []

    def make_opt(params, stage):
        seen.append(stage)
        return torch.optim.SGD(params, lr=0.1)

    _, pipe = piped("fdg", 3, make_opt)
    want = [StageInfo(k, 3, d, v, 6, stash=True, max_versions=4, updates_per_epoch=6.0)
            for k, d, v in [(0, 4, 4), (1, 2, 2), (2, 0, 1)]]
    assert seen[-3:] == want  # built for the fit (6 batches per epoch), not for the Pipeline's first build
    assert [s.tau for s in want] == [3, 1, 0]
    _, pipe = piped("fdg", 3, lambda p: torch.optim.SGD(p, lr=0.1))  # a plain factory still works
    assert len(pipe.stages) == 3


@pytest.mark.parametrize("method,K,betas", [
    ("fdg", 3, [0.99, 0.99, 0.99]),          # stash: the reference's beta1
    ("dsp", 3, [0.9675, 0.9225, 0.9]),       # no stash, V = 4, 2, 1: 0.9 + (V - 1) * 0.09 / 4
    ("fr", 3, [0.96, 0.93, 0.9]),            # no stash, V = 3, 2, 1 = K - k: the reference's / K
    ("dsp", 2, [0.945, 0.9]),                # V = 2, 1: 0.9 + 0.09 / 2
])
def test_nag_async_momentum_per_stage(method, K, betas):
    cfg = RunConfig(method=method, stages=K, model="mlp", model_opts={"hidden": (8, 8, 8)}, epochs=1,
                    optimizer="nag-async", momentum=0.9, progress=False)
    run = build_run(cfg)
    got = [build_stage(run, k).optimizer.param_groups[0]["betas"][0] for k in range(K)]
    assert got == pytest.approx(betas, rel=1e-12, abs=0)


def _stages_with_rates(T=4.0, N=9):
    """FDG K=3 ("bf": tau = 3, 1, 0) with AdamW + pipemare(T) and a per-update scheduler that halves the
    rate; returns the stages, with the lr every update of every stage actually ran at."""
    method, batches, model = get_method("fdg"), tiny_data(), tiny_model()
    schedule = Schedule("decoupled", 3, N)
    used = [[], [], []]
    stages = []
    for k, m in enumerate(split(model, 3, boundaries=[2, 4])):
        info = stage_info(schedule, k, batches.per_epoch)
        opt = pipemare(torch.optim.AdamW(m.parameters(), lr=0.1), T, stage=info)
        opt.register_step_pre_hook(lambda o, a, kw, k=k: used[k].append(o.param_groups[0]["lr"]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda u: 0.5 ** u)
        stages.append(Stage(k, schedule, method, m, opt, scheduler=sched, scheduler_interval="step",
                            batches_per_epoch=batches.per_epoch))
    run_sim(stages, schedule, batches)
    return stages, used


def test_pipemare_rates_per_stage_multiply_the_schedule():
    _, used = _stages_with_rates()
    # update t = 1..5 of each stage: 0.1 * 0.5^(t-1) (the scheduler) / tau^(1 - min(t/4, 1))
    table = {0: [0.1 / 3 ** 0.75, 0.05 / 3 ** 0.5, 0.025 / 3 ** 0.25, 0.0125, 0.00625],
             1: [0.1, 0.05, 0.025, 0.0125, 0.00625], 2: [0.1, 0.05, 0.025, 0.0125, 0.00625]}
    hand = {0: [0.0438691, 0.0288675, 0.0189959, 0.0125, 0.00625]}  # the same, worked out by hand
    for k, want in table.items():
        assert used[k][:5] == pytest.approx(want, rel=1e-15), k
    assert used[0][:5] == pytest.approx(hand[0], rel=1e-5)


def test_pipemare_leaves_the_groups_rate_to_the_scheduler():
    stages, _ = _stages_with_rates(N=9)
    s = stages[0]
    assert s.optimizer.pipemare.t == s.num_updates == 9
    assert s.optimizer.param_groups[0]["lr"] == 0.1 * 0.5 ** 9  # the scheduler's value, uncorrected


# ---- checkpoints, the CLI, the distributed engine -------------------------------------------------------

@pytest.fixture(scope="module")
def cached_data():
    load_dataset("mnist1d")


def test_resume_in_the_middle_of_the_correction_is_bit_exact(tmp_path, monkeypatch, capsys, cached_data):
    base = ["--dataset", "mnist1d", "--model", "mlp", "--batch-size", "500", "--no-progress", "--method", "fdg",
            "--stages", "3", "--order", "fb", "--optimizer", "nag-async", "--lr", "0.003", "--epochs", "3"]
    corrected = [*base, "--lr-correction", "pipemare", "2"]  # 8 batches per epoch: T = 16 updates
    a, b = tmp_path / "a", tmp_path / "b"
    after = keep_each_checkpoint(monkeypatch)
    assert main(["train", *corrected, "--out", str(a), "--checkpoint"]) == 0
    stopped = after(a, 0)
    state = checkpoint.read(checkpoint.in_dir(stopped))["replicas"][0]["stages"][0]["optimizer"]["pipemare"]
    assert 0 < state["t"] < 16  # stage 0 (tau 4) is in the middle of its correction
    assert main(["train", *corrected, "--out", str(b), "--resume", stopped]) == 0
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["params_sha256"] == sb["params_sha256"]
    ra, rb = ([json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b))
    assert [(r["train_loss"], r["test_acc"], r["lr"]) for r in ra] == [(r["train_loss"], r["test_acc"], r["lr"])
                                                                      for r in rb]
    c = tmp_path / "c"  # a checkpoint written without the correction does not go on with it
    assert main(["train", *base, "--out", str(c), "--checkpoint"]) == 0
    capsys.readouterr()
    assert main(["train", *corrected, "--out", str(tmp_path / "d"), "--resume", after(c, 0)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("torchdecoupled: error: ") and "lr_correction 'none' there but" in err[-1], err
    capsys.readouterr()  # and the other way round: a corrected run's checkpoint does not go on without it
    assert main(["train", *base, "--out", str(tmp_path / "e"), "--resume", stopped]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--lr-correction pipemare" in err[-1], err


def test_dist_equals_sim_with_nag_async_and_pipemare(cached_data):
    # DSP "fb" at K = 2: stage 0 recomputes (beta1 0.96) with tau = 2 (corrected over T = 10 updates)
    cfg = tiny_cfg("dsp", 2, method_opts={"order": "fb"}, optimizer="nag-async", lr=0.01,
                   lr_correction="pipemare 1")
    got, want = train(cfg), sim(cfg)
    assert got["params_sha256"] == want["params_sha256"] and got["test_loss"] == want["test_loss"]
    assert sim(cfg, lr_correction="none")["params_sha256"] != want["params_sha256"]  # the correction acts


def test_bad_lr_correction_is_refused_in_one_line():
    assert parse_correction("none") is None and parse_correction(" pipemare  7 ") == 7.0
    for text, match in [("pipemare", "takes one number"), ("pipemare 0", "finite number"), ("pipemare inf",
                        "finite number"), ("pipemare x", "finite number"), ("pipmare 7", "unknown")]:
        with pytest.raises(ValueError, match=match):
            RunConfig(lr_correction=text).resolved()
    assert RunConfig(lr_correction="pipemare   7").resolved().lr_correction == "pipemare 7"
    with pytest.raises(ValueError, match="nag-async"):
        RunConfig(optimizer="nadam").resolved()


def test_cli_and_config_file_take_the_correction(tmp_path):
    from torchdecoupled import config_file
    from torchdecoupled.cli_options import _add_run_options, _given, TRAIN_KEYS
    import argparse
    p = argparse.ArgumentParser()
    _add_run_options(p)
    a = p.parse_args(["--lr-correction", "pipemare", "7", "--optimizer", "nag-async"])
    assert _given(a, TRAIN_KEYS) == {"lr_correction": "pipemare 7", "optimizer": "nag-async"}
    f = tmp_path / "run.toml"
    f.write_text('lr_correction = "pipemare 2.5"\n')
    assert config_file.read(str(f))["lr_correction"] == "pipemare 2.5"
    cfg = RunConfig(lr_correction="pipemare 2.5").resolved()
    assert config_file.to_config(config_file.read(_saved(cfg, tmp_path))).lr_correction == "pipemare 2.5"


def _saved(cfg, tmp_path):
    from torchdecoupled import config_file
    return config_file.write(cfg, str(tmp_path / "saved"))


# ---- PACI's Delta is tau_max -----------------------------------------------------------------------------

def _crossed(schedule: Schedule, k: int, b: int) -> int:
    """Updates stage k runs after the F of batch b and before its B, counted in the drawn grid."""
    ops = [str(a) for t in range(schedule.num_ticks) for a in schedule.actions(t, k)]
    return ops[ops.index(f"F{b}"):ops.index(f"B{b}")].count("U")


@pytest.mark.parametrize("method,opts", [("fdg", {}), ("fdg", {"order": "fb"}), ("adl", {"accumulate": 3}),
                                         ("ddg", {}), ("dsp", {})])
def test_epoch_records_tau_max_is_pacis_delta(method, opts):
    model = tiny_model()
    pipe = Pipeline(model, method, 3, optimizer=lambda p: torch.optim.SGD(p, lr=0.05), boundaries=[2, 4], **opts)
    history = pipe.fit(tiny_data(), epochs=2, progress=False)
    schedule = pipe.last_run["schedule"]
    ticks, done = list(eval_ticks(schedule, 6, 2)), [set(), set(), set()]
    for e, rec in enumerate(history):  # a record holds the batches backwarded by its evaluation tick
        delta = []
        for k in range(3):
            now = {b for b in range(12) if b // 6 <= e and schedule.backward_tick(k, b) <= ticks[e]} - done[k]
            done[k] |= now
            delta.append(max(_crossed(schedule, k, b) for b in now))
        assert rec["staleness"]["max"] == delta, (method, opts, e)
