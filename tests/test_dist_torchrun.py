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


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_a_stopped_rank_under_torchrun_ends_the_run_within_the_timeout_not_torchruns_grace(tmp_path):
    """SIGSTOP one rank mid-run: its peer reports it after --timeout and kills the stopped sibling (torchrun's
    SIGTERM cannot reach a stopped process: it would wait its 30 s grace), so the whole run ends in seconds."""
    import signal
    import subprocess
    import time

    from dist_cases import descendants

    load_dataset("mnist1d")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = tmp_path / "run"
    p = subprocess.Popen([TORCHRUN, "--nproc-per-node", "2", "-m", "torchdecoupled", "train", "--engine", "dist",
                          "--dataset", "mnist1d", "--model", "mlp", "--epochs", "1000", "--stages", "2", "--no-progress",
                          "--timeout", "3", "--no-trace", "--out", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.5)
        ranks = sorted(descendants(p.pid))
        assert len(ranks) >= 2, ranks
        os.kill(ranks[-1], signal.SIGSTOP)
        stopped = time.time()
        _, err = p.communicate(timeout=60)
        took = time.time() - stopped
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0 and took < 3 + 10, (took, err[-2000:])
    assert "failed at tick" in err and "rank" in err, err[-2000:]
    time.sleep(0.5)
    assert not [r for r in ranks if os.path.exists(f"/proc/{r}")], "a rank outlived torchrun"
