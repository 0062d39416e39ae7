"""Two "machines" on this one: two torchrun launches (--nnodes 2, one process each) of the command line
train a K = 2 pipeline over a 127.0.0.1 rendezvous, and the result equals the simulator's bit for bit."""
import json
import os

import pytest
import torch

from dist_cases import TORCHRUN, torchrun_two_nodes
from torchdecoupled.config import RunConfig
from torchdecoupled.data import load_dataset
from torchdecoupled.run import train


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_two_node_torchrun_equals_the_simulator(tmp_path):
    load_dataset("mnist1d")  # cached before the two launches
    args = ["-m", "torchdecoupled", "train", "--engine", "dist", "--method", "fdg", "--stages", "2",
            "--dataset", "mnist1d", "--model", "mlp", "--epochs", "1", "--batch-size", "500", "--lr", "0.1",
            "--timeout", "30", "--no-progress", "--out", str(tmp_path)]
    outs = torchrun_two_nodes(args)
    assert "test_acc" in outs[0]  # rank 0 (node 0) reports; rank 1 prints nothing
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["engine"] == "dist" and summary["world_size"] == 2
    cfg = RunConfig(**{**summary["config"], "engine": "sim", "out": None, "progress": False})
    threads = torch.get_num_threads()
    try:
        assert train(cfg)["params_sha256"] == summary["params_sha256"]
    finally:
        torch.set_num_threads(threads)
