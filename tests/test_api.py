"""The Python API: a user's own nn.Sequential, optimizer, scheduler and DataLoader."""
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

    lb = td.api.LoaderBatches(Loader())
    assert lb.get(4)[1].tolist() == [1, 1] and len(epochs_started) == 2
    assert lb.get(2)[1].tolist() == [2, 2]
    lb.release_before(4)
    assert sorted(lb.cache) == [4]
