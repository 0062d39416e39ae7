"""Tests for torchdecoupled.evaluation (and engines.sim.evaluate on top of it): chunks, sums, metrics, errors."""
import pytest
import torch
from torch import nn

from conftest import cut_stages, tiny_data, tiny_model
from torchdecoupled.engines.sim import evaluate
from torchdecoupled.evaluation import EvalSum, accuracy_counts, eval_chunks, named_metrics
from torchdecoupled.metrics import epoch_record

g = torch.Generator().manual_seed(0)
X = torch.randn(10, 3, generator=g, dtype=torch.float64)
Y = torch.randint(0, 3, (10,), generator=g)


# ---- eval_chunks ----------------------------------------------------------------------------------------

def test_a_pair_is_cut_into_rows_leaf_by_leaf():
    chunks = list(eval_chunks(((X, {"mask": Y > 0}), Y), batch_size=4))
    assert [len(y) for _, y in chunks] == [4, 4, 2]
    (x, extra), y = chunks[2]
    assert torch.equal(x, X[8:]) and torch.equal(extra["mask"], Y[8:] > 0) and torch.equal(y, Y[8:])


def test_batches_are_used_as_they_come():
    pairs = [(X[:3], Y[:3]), [X[3:], Y[3:]]]
    assert [len(y) for _, y in eval_chunks(pairs, batch_size=1)] == [3, 7]
    dicts = ({"image": X[i:i + 5], "label": Y[i:i + 5]} for i in (0, 5))
    got = list(eval_chunks(dicts, keys=("image", "label")))
    assert len(got) == 2 and torch.equal(got[1][1], Y[5:])


@pytest.mark.parametrize("data, kwargs, error, needle", [
    ((X, Y, Y), {}, ValueError, "tuple of 3 items"),
    ((X, Y[:5]), {}, ValueError, "have 10 rows, tensors of shapes [(5,)]"),
    ((X, Y), {"batch_size": 0}, ValueError, "batch_size must be an integer >= 1 (got 0)"),
    (X, {}, TypeError, "Tensor"),
    ([X], {}, ValueError, "(inputs, targets) pair or a dict (got a Tensor)"),
    ([(X, Y, Y)], {}, ValueError, "got a tuple of 3"),
    ([{"x": X, "target": Y}], {}, ValueError, "no ['y']"),
])
def test_chunk_errors(data, kwargs, error, needle):
    with pytest.raises(error) as info:
        list(eval_chunks(data, **kwargs))
    assert needle in str(info.value)


# ---- accuracy and EvalSum -------------------------------------------------------------------------------

def test_accuracy_applies_only_to_class_targets():
    logits = torch.randn(4, 5, 3, generator=g)
    tokens = torch.randint(0, 3, (4, 5), generator=g)
    correct, count = accuracy_counts(logits, tokens)
    assert count == 20 and int(correct) == int((logits.argmax(-1) == tokens).sum())
    assert accuracy_counts(logits, tokens.float()) is None           # regression targets
    assert accuracy_counts(logits, tokens > 0) is None               # bool targets
    assert accuracy_counts(logits, tokens[:, :4]) is None            # shapes do not fit
    assert accuracy_counts(logits.argmax(-1), tokens) is None        # integer outputs
    assert accuracy_counts((logits,), tokens) is None                # a pytree of outputs


def test_sums_weight_by_samples_over_uneven_chunks():
    out = torch.randn(10, 3, generator=g, dtype=torch.float64)
    total = EvalSum(metrics={"mae": lambda o, t: (o.argmax(1) - t).abs().double().mean()})
    for i, j in [(0, 3), (3, 10)]:
        total.add(out[i:j], Y[i:j])
    got = total.result()
    assert set(got) == {"test_loss", "test_acc", "test_mae"}
    assert got["test_loss"] == pytest.approx(nn.functional.cross_entropy(out, Y).item(), rel=1e-12)
    assert got["test_acc"] == int((out.argmax(1) == Y).sum()) / 10
    assert got["test_mae"] == pytest.approx((out.argmax(1) - Y).abs().double().mean().item(), rel=1e-12)


def test_samples_come_from_the_targets_first_tensor():
    total = EvalSum(criterion=lambda o, t: o["a"].sum() * 0 + 1.0)
    total.add({"a": torch.ones(2, 7)}, {"y": torch.zeros(5, 2), "w": torch.ones(3)})
    total.add({"a": torch.ones(4, 7)}, None)  # no targets: the outputs' first tensor
    assert total.samples == 9 and "test_acc" not in total.result()


def test_metric_names():
    def mae(o, t):
        return 0.0
    assert list(named_metrics([mae])) == ["mae"]
    with pytest.raises(ValueError, match="other than loss, acc"):
        named_metrics({"acc": mae})
    with pytest.raises(ValueError, match="share a name"):
        named_metrics([mae, mae])
    with pytest.raises(ValueError, match="nothing was evaluated"):
        EvalSum().result()


# ---- evaluate and the epoch record ----------------------------------------------------------------------

def test_evaluate_runs_the_stages_with_a_criterion_and_metrics():
    batches = tiny_data()
    model = tiny_model()
    stages, _ = cut_stages("fdg", 3, model, batches, 4, [2, 4])
    x, y = batches.x, batches.y
    out = model(x)

    def top2(o, t):
        return (o.topk(2, dim=1).indices == t[:, None]).any(1).double().mean()
    got = evaluate(stages, (x, y), metrics=[top2], batch_size=20)
    assert got["test_loss"] == pytest.approx(nn.functional.cross_entropy(out, y).item(), rel=1e-12)
    assert got["test_acc"] == int((out.argmax(1) == y).sum()) / len(y)
    assert got["test_top2"] == pytest.approx(top2(out, y).item(), rel=1e-12)
    mse = evaluate(stages, (x, y), criterion=lambda o, t: (o ** 2).mean())
    assert mse["test_loss"] == pytest.approx((out ** 2).mean().item(), rel=1e-12)


def test_epoch_record_has_train_acc_only_with_targets():
    stage = {"tau_mean": 0.0, "tau_max": 0, "peak_bytes": 0, "lr": 0.1}
    rec = epoch_record(0, [{**stage, "loss_sum": 6.0, "samples": 3}], {"test_loss": 1.0}, 0.0)
    assert rec["train_loss"] == 2.0 and "train_acc" not in rec
    rec = epoch_record(0, [{**stage, "loss_sum": 6.0, "samples": 3, "correct": 6, "targets": 12}], {}, 0.0)
    assert rec["train_acc"] == 0.5
