"""Small shared fixtures: a tiny float64 network and a deterministic in-memory batch source."""
import copy

import pytest
import torch
from torch import nn

from torchdecoupled.engines.sim import run_sim
from torchdecoupled.methods import get_method
from torchdecoupled.partition import split
from torchdecoupled.predict import make_predictor
from torchdecoupled.schedule import Schedule
from torchdecoupled.stage import Stage

torch.set_num_threads(1)  # the library's default (one thread per stage); the suite shares a 2-core machine


class TensorBatches:
    """Batch b is rows [b*bs, (b+1)*bs) of the data, cycling over epochs (no shuffle)."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.bs = x, y, batch_size
        self.per_epoch = len(x) // batch_size

    def get(self, b):
        i = (b % self.per_epoch) * self.bs
        return self.x[i:i + self.bs], self.y[i:i + self.bs]


def tiny_data(n=48, features=6, classes=3, batch_size=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorBatches(x, y, batch_size)


def batch_id_data(n=40, bs=4, classes=5):
    """Every row holds its batch id (6 features) and the labels cycle with it: a stage that sees the
    wrong batch, or the wrong labels, shows it at once. Returns (batches, an identity network of 8
    float64 Linear layers)."""
    x = (torch.arange(n, dtype=torch.float64) // bs).view(n, 1).repeat(1, 6)
    y = (torch.arange(n) // bs) % classes
    batches = TensorBatches(x, y, bs)
    model = nn.Sequential(*[nn.Linear(6, 6, dtype=torch.float64) for _ in range(8)])
    with torch.no_grad():
        for m in model:
            m.weight.copy_(torch.eye(6))
            m.bias.zero_()
    return batches, model


def tiny_model(seed=0, dtype=torch.float64, features=6, classes=3):
    torch.manual_seed(seed)
    layers = [nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
              nn.Linear(8, classes)]
    return nn.Sequential(*layers).to(dtype)


CUTS = {1: None, 2: [4], 3: [2, 4], 4: [2, 4, 6]}


def make_stages(method_name, K, model, batches, num_batches, lr=0.1, momentum=0.9, optimizer=None,
                scheduler=None, scheduler_interval="epoch", **opts):
    """Stages of `model` cut at CUTS[K]; `optimizer(params)` and `scheduler(optimizer)` are factories."""
    method = get_method(method_name, **opts)
    schedule = Schedule(method.family, K, num_batches, method.order, method.accumulate)
    modules = split(model, K, boundaries=CUTS[K]) if K > 1 else [nn.Sequential(*model)]
    make_opt = optimizer or (lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum))
    stages = []
    for k, m in enumerate(modules):
        opt = make_opt(list(m.parameters()))
        stages.append(Stage(k, schedule, method, m, opt, scheduler=scheduler(opt) if scheduler else None,
                            scheduler_interval=scheduler_interval, batches_per_epoch=batches.per_epoch))
    return stages, schedule


def cut_stages(name, K, model, batches, N, cuts, lr=0.1, momentum=0.9, predictor=None, **opts):
    """Stages of `model` cut at `cuts`; DTRP stages get a fresh predictor each (make_predictor)."""
    method = get_method(name, **opts)
    schedule = Schedule(method.family, K, N, method.order, method.accumulate)
    edges = [0, *cuts, len(model)]
    stages = []
    for k in range(K):
        m = model[edges[k]:edges[k + 1]]
        pred = predictor or (method.predictor if method.predictor != "none" else None)
        stages.append(Stage(k, schedule, method, m, torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum),
                            predictor=make_predictor(pred) if pred else None, seed=3,
                            batches_per_epoch=batches.per_epoch))
    return stages, schedule


def train_sim(method_name, K, num_batches=12, seed=0, stage_order=None, **kw):
    batches = kw.pop("batches", None) or tiny_data()
    model = tiny_model(seed)
    stages, schedule = make_stages(method_name, K, model, batches, num_batches, **kw)
    run_sim(stages, schedule, batches, stage_order=stage_order)
    return model, stages


def plain_loop(num_batches, lr=0.1, momentum=0.9, accumulate=1, seed=0, batches=None):
    """The oracle: an ordinary PyTorch training loop."""
    batches = batches or tiny_data()
    model = tiny_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    opt.zero_grad()
    for b in range(num_batches):
        x, y = batches.get(b)
        nn.functional.cross_entropy(model(x), y).backward()
        if (b + 1) % accumulate == 0 or b == num_batches - 1:
            opt.step()
            opt.zero_grad()
    return model


def assert_same_params(a, b):
    pa, pb = list(a.parameters()), list(b.parameters())
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb):
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.fixture
def clone():
    return copy.deepcopy
