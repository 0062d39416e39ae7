"""A GPT trained decoupled on text, in float32 and bf16: K = 1 equals a plain PyTorch loop bit for bit, the
distributed engine equals the simulator, every batch's loss uses that batch's targets through the whole
pipeline, bf16 boundaries carry half the bytes, and the CLI trains, reports bits per byte and samples."""
import json
import math

import pytest
import torch
from torch import nn

import torchdecoupled as td
from torchdecoupled import cli
from torchdecoupled.build import warmup_cosine
from torchdecoupled.config import RunConfig
from torchdecoupled.models import build_model, lm_loss

CONTEXT, VOCAB = 16, 256


def tiny_gpt(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return build_model("gpt", VOCAB, (CONTEXT,), layers=3, width=32, heads=2, dropout=dropout)


def token_batches(n=6, bs=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, VOCAB, (n * bs, CONTEXT + 1), generator=g)
    return [(stream[i * bs:(i + 1) * bs, :-1], stream[i * bs:(i + 1) * bs, 1:]) for i in range(n)]


def adamw(params):
    return torch.optim.AdamW(params, lr=3e-3, weight_decay=0.1)


def sched(opt, updates=12):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(updates, 0.25, s))


def same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_one_stage_equals_a_plain_pytorch_loop_bit_for_bit(precision):
    data, epochs = token_batches(), 2
    ours, plain = tiny_gpt(dropout=0.1), tiny_gpt(dropout=0.1)
    td.Pipeline(ours, "bp", 1, optimizer=adamw, scheduler=sched, scheduler_interval="step", criterion=lm_loss,
                precision=precision, seed=3).fit(data, epochs, progress=False)
    opt = adamw(plain.parameters())
    lr = sched(opt)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    for e in range(epochs):
        for b, (x, y) in enumerate(data):
            with torch.random.fork_rng(devices=[]):  # the stage's dropout stream for batch b (Stage._rng)
                torch.default_generator.manual_seed((3 * 1_000_003 + e * len(data) + b) % 2**63)
                with ctx:
                    loss = lm_loss(plain(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr.step()
    assert same(ours, plain)


def _criterion_log():
    seen = []

    def criterion(logits, targets):
        seen.append((logits.detach().float().clone(), targets.clone()))
        return lm_loss(logits, targets)
    return criterion, seen


@pytest.mark.parametrize("method", ["fdg", "ddg", "dsp"])
def test_each_batch_loss_uses_its_own_targets_through_the_pipeline(method):
    """lr = 0: the weights never move, so the last stage's outputs for batch b must be the whole model's on
    x_b, and its targets y_b, in batch order, whatever the delays."""
    data = token_batches(n=5)
    model, ref = tiny_gpt(), tiny_gpt()
    criterion, seen = _criterion_log()
    td.Pipeline(model, method, 3, optimizer=lambda p: torch.optim.SGD(p, lr=0.0), criterion=criterion).fit(
        data, 1, progress=False)
    assert len(seen) == len(data)
    with torch.no_grad():
        for (x, y), (logits, targets) in zip(data, seen):
            assert torch.equal(targets, y)
            torch.testing.assert_close(logits, ref(x), rtol=0, atol=1e-5)


def test_bf16_boundaries_carry_half_the_bytes_and_the_gradients_come_back_in_bf16():
    data = token_batches(n=3)
    pipe = td.Pipeline(tiny_gpt(), "fdg", 2, optimizer=adamw, criterion=lm_loss, precision="bf16")
    pipe.fit(data, 1, progress=False)
    s0, s1 = pipe.stages
    x, y = data[0]
    h = s0.forward(99, x)
    assert h.dtype == torch.bfloat16 and h.shape == (4, CONTEXT, 32)
    s1.forward(99, h, y)
    g = s1.backward(99)
    assert g.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in pipe.model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in s0.optimizer.state.values())


def test_bf16_is_refused_over_float64_weights_and_unknown_precisions_are_named():
    with pytest.raises(ValueError, match="float32 master weights"):
        td.Pipeline(tiny_gpt().double(), "fdg", 2, optimizer=adamw, precision="bf16")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        td.Pipeline(tiny_gpt(), "fdg", 2, optimizer=adamw, precision="fp8")


@pytest.mark.parametrize("stages,precision", [(2, "float32"), (3, "bf16")])
def test_dist_engine_equals_the_simulator_on_a_gpt(stages, precision):
    data = token_batches(n=6)
    val = (torch.cat([x for x, _ in data[:2]]), torch.cat([y for _, y in data[:2]]))
    runs = {}
    for engine in ("sim", "dist"):
        model = tiny_gpt(dropout=0.1)
        pipe = td.Pipeline(model, "fdg", stages, optimizer=adamw, scheduler=sched, scheduler_interval="step",
                           criterion=lm_loss, precision=precision, engine=engine, token_unit="byte", seed=2)
        runs[engine] = (model, pipe.fit(data, 2, val_data=val, progress=False))
    assert same(runs["sim"][0], runs["dist"][0])
    assert runs["sim"][1][-1]["test_loss"] == runs["dist"][1][-1]["test_loss"]
    assert runs["dist"][1][-1]["test_bits_per_byte"] == runs["dist"][1][-1]["test_loss"] / math.log(2)


def test_warmup_cosine_factors():
    assert [round(warmup_cosine(10, 0.2, s), 4) for s in range(11)] == [
        0.5, 1.0, 1.0, 0.9619, 0.8536, 0.6913, 0.5, 0.3087, 0.1464, 0.0381, 0.0]


def test_cli_trains_a_gpt_on_a_users_text_reports_bits_per_byte_and_samples(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    out = tmp_path / "run"
    argv = ["train", "--dataset", "text", "--data-root", str(corpus), "--context", "32", "--model", "gpt_mini",
            "--method", "fdg", "--stages", "4", "--epochs", "1", "--batch-size", "32", "--precision", "bf16",
            "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["stages"] == 4
    assert summary["test_bits_per_byte"] == pytest.approx(summary["test_loss"] / math.log(2))
    assert summary["test_perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_bits_per_byte", "train_perplexity", "test_bits_per_byte", "test_perplexity"} <= set(rec)
    capsys.readouterr()
    assert cli.main(["sample", str(out), "--prompt", "the quick", "--tokens", "20", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("the quick") and len(text.encode()) >= len("the quick") + 1
    assert cli.main(["sample", str(out), "--prompt", "the quick", "--tokens", "20", "--seed", "1"]) == 0
    assert capsys.readouterr().out == text  # seeded: the same command, the same text


def test_sample_refuses_a_run_that_is_not_a_language_model(tmp_path, capsys):
    out = tmp_path / "digits"
    assert cli.main(["train", "--dataset", "digits", "--stages", "1", "--epochs", "1", "--out", str(out),
                     "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["sample", str(out), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "not a language model" in err and "Traceback" not in err


def test_text_defaults_are_adamw_with_warmup_cosine_per_update():
    cfg = RunConfig(dataset="text").resolved()
    assert (cfg.model, cfg.optimizer, cfg.lr_schedule, cfg.precision) == ("gpt_mini", "adamw", "warmup_cosine",
                                                                           "float32")
    assert RunConfig(dataset="mnist1d").resolved().optimizer == "sgd"
    with pytest.raises(ValueError, match="--precision bf16 keeps float32 master weights"):
        RunConfig(dataset="text", precision="bf16", dtype="float64").resolved()
