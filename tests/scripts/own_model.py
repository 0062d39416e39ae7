"""A user's own script: a model class, AdamW with a per-step OneCycleLR, a shuffled DataLoader with
workers, trained with FDG (K=2), DTRP (K=3) and DGL (K=3). Run as ``python own_model.py MODE``:

    both   train each on engine="sim" and on engine="dist"; exit 1 unless the weights are equal
    dist   train on engine="dist" only those with as many stages as WORLD_SIZE (under torchrun)

Rank 0 (or the only process) prints one JSON line: method -> SHA-256 of the trained model's weights,
read from the model object the script passed to the Pipeline. No main guard on purpose."""
import hashlib
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchdecoupled as td


class Block(nn.Module):  # the user's own layer: defined here, in __main__
    def __init__(self, width):
        super().__init__()
        self.fc, self.act = nn.Linear(width, width), nn.Tanh()

    def forward(self, x):
        return x + self.act(self.fc(x))


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), Block(16), Block(16), Block(16), nn.Linear(16, 3)).double()


def make_loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 8, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, num_workers=2,
                      generator=torch.Generator().manual_seed(2))


def sha(model):
    h = hashlib.sha256()
    for p in model.state_dict().values():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def train(method, stages, engine, **kw):
    model, loader = make_model(), make_loader()
    steps = 2 * len(loader)
    pipe = td.Pipeline(model, method, stages, engine=engine, seed=0, timeout=30,
                       optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
                       scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 1e-2, total_steps=steps),
                       scheduler_interval="step", **kw)
    history = pipe.fit(loader, epochs=2, progress=False)
    assert len(history) == 2, history
    return sha(model)


RUNS = {"fdg": ("fdg", 2, {}), "dtrp": ("dtrp", 3, {}), "dgl": ("dgl", 3, {"num_classes": 3, "head": "linear"})}
mode = sys.argv[1] if len(sys.argv) > 1 else "both"
out = {}
world = int(os.environ.get("WORLD_SIZE", "0"))
for name, (method, K, kw) in RUNS.items():
    if mode == "dist" and K != world:
        continue
    got = train(method, K, "dist", **kw)
    if mode == "both":
        want = train(method, K, "sim", **kw)
        if got != want:
            print(f"{name}: dist {got} != sim {want}", file=sys.stderr)
            sys.exit(1)
    out[name] = got
if int(os.environ.get("RANK", "0")) == 0:
    print(json.dumps(out))
