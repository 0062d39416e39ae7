"""torchdecoupled.heads: shapes, gradients, SupCon by hand, DGL layout, schedule, registry."""
import math

import pytest
import torch
from torch import nn

from torchdecoupled.heads import (HEADS, AuxHead, DGLHead, InfoProHead, LinearHead, infopro_lambdas,
                                  make_head, supcon_loss)

# (feature_shape, input_shape): 2D conv features on images, 1D conv features on MNIST-1D's flat
# (40,) input, flat MLP features; plus rank mismatches the infopro decoder must still handle.
KINDS = {
    "2d": ((8, 8, 8), (3, 16, 16)),
    "1d": ((6, 20), (40,)),
    "flat": ((32,), (3, 8, 8)),
}
EXTRA = {"1d_channels": ((6, 10), (2, 40)), "2d_flat_input": ((4, 5, 5), (40,)),
         "2d_odd": ((5, 9, 7), (1, 28, 28))}
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
# heads built from the pipeline's stages (auglocal, lm_frozen) or for token streams (lm): tests/test_heads_new.py
GENERIC = sorted(set(HEADS) - {"auglocal", "lm", "lm_frozen", "man_dgl", "man_infopro"})  # man: test_man.py


def batch(feature_shape, input_shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(len(Y), *feature_shape, generator=g, dtype=dtype, requires_grad=True)
    x0 = torch.randn(len(Y), *input_shape, generator=g, dtype=dtype)
    return h, Y.clone(), x0


@pytest.mark.parametrize("name", GENERIC)
@pytest.mark.parametrize("kind", sorted(KINDS) + sorted(EXTRA))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_is_finite_scalar_with_grads_to_h_and_params(name, kind, dtype):
    feature_shape, input_shape = {**KINDS, **EXTRA}[kind]
    torch.manual_seed(0)
    head = make_head(name, feature_shape, 3, input_shape, stage=0, num_stages=3).to(dtype)
    h, y, x0 = batch(feature_shape, input_shape, dtype)
    h_before, version = h.detach().clone(), h._version
    loss = head.loss(h, y, x0)
    assert loss.shape == () and loss.dtype == dtype and torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum() for p in head.parameters()) > 0
    assert h._version == version and torch.equal(h.detach(), h_before)  # h untouched


@pytest.mark.parametrize("name", GENERIC)
def test_deterministic_under_manual_seed_and_seed_kwarg(name):
    feature_shape, input_shape = KINDS["2d"]
    h, y, x0 = batch(feature_shape, input_shape)
    losses = []
    for _ in range(2):
        torch.manual_seed(3)
        losses.append(make_head(name, feature_shape, 3, input_shape).loss(h, y, x0))
    assert torch.equal(losses[0], losses[1])
    state = torch.get_rng_state()
    a = make_head(name, feature_shape, 3, input_shape, seed=7).loss(h, y, x0)
    b = make_head(name, feature_shape, 3, input_shape, seed=7).loss(h, y, x0)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def supcon_oracle(z, y, tau):
    """Khosla et al. Eq. 2 written as loops, anchors without positives skipped."""
    terms = []
    for i in range(len(y)):
        pos = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(len(y)) if a != i)
        logs = [math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos]
        terms.append(-sum(logs) / len(pos))
    return sum(terms) / len(terms)


def test_supcon_by_hand():
    # z = [e1, e1, e2, e2], labels [0, 0, 1, 1], tau = 1: every anchor sees its positive at
    # similarity 1 and two negatives at 0, so the loss is -log(e / (e + 2)).
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    got = supcon_loss(z, torch.tensor([0, 0, 1, 1]), temperature=1.0)
    assert got.item() == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-12)


def test_supcon_matches_loop_oracle_with_singletons():
    g = torch.Generator().manual_seed(1)
    z = nn.functional.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 2, 2, 2, 3, 1, 4])  # classes 3 and 4 appear once
    assert supcon_loss(z, y, 0.07).item() == pytest.approx(supcon_oracle(z, y, 0.07), rel=1e-10)


def test_supcon_separated_clusters_beat_shuffled_labels():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    z = nn.functional.normalize(centres[y] + 0.05 * torch.randn(8, 3, generator=g), dim=1)
    shuffled = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    assert supcon_loss(z, y) < supcon_loss(z, shuffled) - 1.0


def test_supcon_all_unique_labels_is_zero_without_nan():
    z = nn.functional.normalize(torch.randn(5, 4), dim=1).requires_grad_()
    loss = supcon_loss(z, torch.arange(5))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()
    one = torch.randn(1, 4, requires_grad=True)  # batch of one
    supcon_loss(nn.functional.normalize(one, dim=1), torch.tensor([0])).backward()
    assert torch.isfinite(one.grad).all()


def count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


def test_dgl_layer_structure_2d():
    head = make_head("dgl", (16, 9, 9), 10, (3, 32, 32))
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 3 and count(head, nn.BatchNorm2d) == 3
    assert all(c.kernel_size == (1, 1) for c in convs)
    assert all((c.in_channels, c.out_channels) == (16, 16) for c in convs)
    assert len(linears) == 4 and count(head, nn.BatchNorm1d) == 3 and count(head, nn.ReLU) == 6
    assert [(l.in_features, l.out_features) for l in linears] == [(64, 64)] * 3 + [(64, 10)]
    seen = []
    convs[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[2:])))
    head.loss(torch.randn(4, 16, 9, 9), torch.tensor([0, 1, 2, 3]), torch.randn(4, 3, 32, 32))
    assert seen == [(3, 3)]  # pooled to ceil(9 / 4)


def test_dgl_layer_structure_1d_and_flat():
    head = make_head("dgl", (8, 40), 10, (40,))
    assert count(head, nn.Conv1d) == 3 and count(head, nn.BatchNorm1d) == 6
    assert [(l.in_features, l.out_features) for l in head.modules() if isinstance(l, nn.Linear)] \
        == [(16, 16)] * 3 + [(16, 10)]
    flat = make_head("dgl", (32,), 10, (40,))
    assert count(flat, nn.Conv1d) + count(flat, nn.Conv2d) == 0 and count(flat, nn.BatchNorm1d) == 3
    assert [(l.in_features, l.out_features) for l in flat.modules() if isinstance(l, nn.Linear)] \
        == [(32, 32)] * 3 + [(32, 10)]


def test_linear_head_learns_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 16)
    h = torch.randn(32, 4, 3, 3, generator=g) * 0.3 + (2.0 * y - 1.0).view(-1, 1, 1, 1)
    head = make_head("linear", (4, 3, 3), 2, (1, 6, 6), seed=0)
    assert isinstance(head, LinearHead)
    losses = []
    for _ in range(20):  # SGD by hand: a first torch.optim optimizer costs seconds of imports
        head.zero_grad()
        loss = head.loss(h, y, None)
        loss.backward()
        with torch.no_grad():
            for p in head.parameters():
                p -= 0.5 * p.grad
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < 0.1
    assert (head.logits(h).argmax(1) == y).all()


def test_infopro_lambda_schedule_monotone_in_stage():
    assert infopro_lambdas(0, 2) == (5.0, 0.5)
    for k in range(3, 9):
        lam = [infopro_lambdas(s, k) for s in range(k - 1)]
        assert lam[0] == (5.0, 0.5) and lam[-1] == (0.5, 1.0)
        assert all(a[0] > b[0] and a[1] < b[1] for a, b in zip(lam, lam[1:]))
    head = make_head("infopro", (4, 4, 4), 3, (3, 8, 8), stage=1, num_stages=4)
    assert (head.lambda1, head.lambda2) == infopro_lambdas(1, 4)
    fixed = make_head("infopro", (4, 4, 4), 3, (3, 8, 8), stage=1, num_stages=4,
                      lambda1=2.0, lambda2=0.0)
    assert (fixed.lambda1, fixed.lambda2) == (2.0, 0.0)


@pytest.mark.parametrize("kind", sorted(KINDS) + sorted(EXTRA))
def test_infopro_loss_is_weighted_sum_and_reconstruction_has_input_shape(kind):
    feature_shape, input_shape = {**KINDS, **EXTRA}[kind]
    head = make_head("infopro", feature_shape, 3, input_shape, lambda1=2.0, lambda2=3.0, seed=0)
    assert isinstance(head, InfoProHead)
    h, y, x0 = batch(feature_shape, input_shape)
    recon = head.reconstruct(h)
    assert recon.shape == x0.shape and 0 <= recon.min() and recon.max() <= 1
    want = (2.0 * nn.functional.binary_cross_entropy(recon, head.target(x0))  # the reference's Decoder
            + 3.0 * supcon_loss(head.embed(h), y, 0.07))
    assert torch.allclose(head.loss(h, y, x0), want)
    if len(feature_shape) == 3 and len(input_shape) == 3:  # bilinear + conv decoder, as in InfoPro
        assert count(head.decoder, nn.Conv2d) == 2
        assert head.decoder[-1].out_channels == input_shape[0]


def test_infopro_target_is_the_reference_restored_image():
    # the reference decodes _image_restore(img): the [0, 1] image before the mean/std normalisation
    g = torch.Generator().manual_seed(0)
    img = torch.rand(6, 3, 5, 5, generator=g)
    img[0, :, 0, 0], img[1, :, 0, 0] = 0.0, 1.0  # a black and a white pixel per channel
    mean, std = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1), torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    assert torch.allclose(InfoProHead.target((img - mean) / std), img, atol=1e-6)
    flat = InfoProHead.target(torch.randn(4, 7, generator=g))  # flat x0: one min and max for the batch
    assert flat.min() == 0 and flat.max() == 1
    assert torch.equal(InfoProHead.target(torch.full((3, 1, 4), 2.0)), torch.zeros(3, 1, 4))


@pytest.mark.parametrize("kind", sorted(KINDS) + sorted(EXTRA))
def test_infopro_reconstruction_gradient_is_bounded(kind):
    # sigmoid + BCE: d(recon)/d(decoder output) = (sigmoid(z) - x01) / numel, at most 1 / numel per element
    # whatever the decoder outputs. MSE against x0 (this head before) gave 2 (z - x0) / numel: a decoder
    # that overshoots gets a gradient that grows with it, which ran away at lr 0.05 (docs/accuracy_methods.md)
    feature_shape, input_shape = {**KINDS, **EXTRA}[kind]
    head = make_head("infopro", feature_shape, 3, input_shape, lambda1=5.0, lambda2=0.0, seed=0)
    h, y, x0 = batch(feature_shape, input_shape)
    last = [m for m in head.decoder.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))][-1]
    with torch.no_grad():
        last.weight.mul_(1e3)  # decoder outputs in the thousands
    out = []
    head.decoder.register_forward_hook(lambda m, i, o: out.append(o) or o.retain_grad())
    head.loss(h, y, x0).backward()
    assert out[0].abs().max() > 100
    assert out[0].grad.abs().max() <= 5.0 / x0[0].numel() + 1e-9
    assert torch.isfinite(h.grad).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infopro_stage_trains_stably_at_mnist1d_lr(seed):
    # stage 0 of cnn1d_bn (K = 2) and its head, exactly as in the accuracy runs (SGD lr 0.05, momentum
    # 0.9, wd 5e-4, batch 50). With the MSE reconstruction, seed 2's went 1.1 -> 5e5 in 8 steps, then NaN.
    from torchdecoupled.build import build_run, build_stage
    from torchdecoupled.config import RunConfig
    run = build_run(RunConfig(method="infopro", stages=2, dataset="mnist1d", epochs=1, seed=seed, progress=False))
    stage = build_stage(run, 0)
    head, recon, rms = stage.head, [], []
    for b in range(40):
        x, y = run.batches.get(b)
        h = stage.module(x)
        loss = head.loss(h, y, x)
        stage.optimizer.zero_grad()
        loss.backward()
        stage.optimizer.step()
        recon.append(nn.functional.binary_cross_entropy_with_logits(head.decode(h), head.target(x)).item())
        rms.append(h.detach().pow(2).mean().sqrt().item())
    assert all(math.isfinite(r) for r in recon + rms)
    assert max(recon) < 1.2 * recon[0] and max(rms) < 2 * rms[0]


def test_custom_head_instance_and_registry_entry():
    class MeanHead(AuxHead):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def loss(self, h, y, x0):
            return self.w * h.mean()

    mine = MeanHead()
    assert make_head(mine, (4,), 2, (4,)) is mine
    h = torch.randn(3, 4)
    assert torch.equal(mine(h, None, None), h.mean())
    HEADS["mean"] = lambda fs, nc, ins, **kw: MeanHead()
    try:
        assert isinstance(make_head("mean", (4,), 2, (4,)), MeanHead)
    finally:
        del HEADS["mean"]
    with pytest.raises(TypeError, match="AuxHead"):
        make_head(nn.Linear(2, 2), (4,), 2, (4,))


def test_errors_name_the_values_and_the_fix():
    with pytest.raises(ValueError, match=r"unknown head 'dlg' \(valid: auglocal, dgl, infopro, linear, lm, lm_frozen, man_dgl, man_infopro\)"):
        make_head("dlg", (4,), 2, (4,))
    with pytest.raises(ValueError, match=r"feature_shape .*\(8, 3, 4, 4\)"):
        make_head("linear", (8, 3, 4, 4), 2, (4,))
    with pytest.raises(ValueError, match="stage 1, num_stages 2"):
        make_head("linear", (4,), 2, (4,), stage=1, num_stages=2)
    head = make_head("dgl", (8, 4, 4), 2, (3, 8, 8))
    with pytest.raises(ValueError, match=r"feature_shape \(8, 4, 4\).*\(2, 8, 5, 5\)"):
        head.loss(torch.randn(2, 8, 5, 5), torch.tensor([0, 1]), None)
    assert isinstance(head, DGLHead)
