"""Two "machines" on this one: two torchrun launches (--nnodes 2, one process each) of the command line
train a K = 2 pipeline over a 127.0.0.1 rendezvous, and the result equals the simulator's bit for bit."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from torchdecoupled.config import RunConfig
from torchdecoupled.data import load_dataset
from torchdecoupled.train import train

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_two_node_torchrun_equals_the_simulator(tmp_path):
    load_dataset("mnist1d")  # cached before the two launches
    port = _free_port()
    args = ["-m", "torchdecoupled", "train", "--engine", "dist", "--method", "fdg", "--stages", "2",
            "--dataset", "mnist1d", "--model", "mlp", "--epochs", "1", "--batch-size", "500", "--lr", "0.1",
            "--timeout", "30", "--no-progress", "--out", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TORCHDECOUPLED_FAULT")}
    nodes = [subprocess.Popen([TORCHRUN, "--nnodes", "2", "--node-rank", str(n), "--nproc-per-node", "1",
                               "--master-addr", "127.0.0.1", "--master-port", str(port), *args],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in (0, 1)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(outs)
    assert "test_acc" in outs[0]  # rank 0 (node 0) reports; rank 1 prints nothing
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["engine"] == "dist" and summary["world_size"] == 2
    cfg = RunConfig(**{**summary["config"], "engine": "sim", "out": None, "progress": False})
    threads = torch.get_num_threads()
    try:
        assert train(cfg)["params_sha256"] == summary["params_sha256"]
    finally:
        torch.set_num_threads(threads)
