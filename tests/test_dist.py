"""The distributed engine equals the simulator: same seed, same config, the same parameters bit for bit
(one process per stage, one thread each, CPU). Plus replicas, outputs and the timeline."""
import dataclasses
import json

import pytest
import torch

from dist_cases import sim_of, sim_summary, tiny_cfg
from torchdecoupled.build import build_pipeline, build_run, build_stage
from torchdecoupled.data import load_dataset
from torchdecoupled.engines.sim import run_sim
from torchdecoupled.methods import METHODS
from torchdecoupled.run import train


@pytest.fixture(scope="module", autouse=True)
def cached_data():
    load_dataset("mnist1d")  # generate the cache once here, not in every stage process


@pytest.mark.parametrize("name", sorted(METHODS))
def test_dist_equals_sim_every_method_k2(name):
    cfg = tiny_cfg(name, 2)
    got = train(cfg)
    want = sim_summary(cfg)
    assert got["params_sha256"] == want["params_sha256"]
    assert got["test_loss"] == want["test_loss"] and got["train_loss"] == want["train_loss"]


@pytest.mark.parametrize("name,K,kw", [("fdg", 4, {}), ("ddg", 3, {"dtype": "float32"}),
                                       ("adl", 2, {"dtype": "float32"}),
                                       ("dsp", 3, {"dtype": "float32", "model": "cnn1d_bn", "model_opts": {}})])
def test_dist_equals_sim_deeper_float32_batchnorm(name, K, kw):
    cfg = tiny_cfg(name, K, **kw)
    assert train(cfg)["params_sha256"] == sim_summary(cfg)["params_sha256"]


def test_outputs_equal_the_simulators_and_show_the_timeline(tmp_path):
    cfg = tiny_cfg("fdg", 2, out=str(tmp_path / "dist"))
    summary = train(cfg)
    on_disk = json.loads((tmp_path / "dist" / "summary.json").read_text())
    assert on_disk["params_sha256"] == summary["params_sha256"]
    assert summary["engine"] == "dist" and summary["world_size"] == 2 and len(summary["idle_fraction"]) == 2
    threads = torch.get_num_threads()
    try:
        train(dataclasses.replace(sim_of(cfg), out=str(tmp_path / "sim")))
    finally:
        torch.set_num_threads(threads)
    read = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    dist_records, sim_records = read("dist"), read("sim")
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "staleness", "stored_bytes_peak", "lr")
    assert [{k: r[k] for k in keys} for r in dist_records] == [{k: r[k] for k in keys} for r in sim_records]
    assert [r["epoch"] for r in dist_records] == [0, 1]
    for r in dist_records:
        assert len(r["idle_fraction"]) == 2 and all(0.0 <= f <= 1.0 for f in r["idle_fraction"])
    trace = json.loads((tmp_path / "dist" / "timeline.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {"F0", "B0", "U", "eval 0", "eval 1"} <= {e["name"] for e in spans}
    assert {e["pid"] for e in spans} == {0, 1} and all(e["dur"] >= 0 for e in spans)
    assert (tmp_path / "dist" / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def _sim_state(cfg):
    run = build_run(sim_of(cfg))
    stages = [build_stage(run, k) for k in range(cfg.stages)]
    run_sim(stages, run.schedule, run.batches)
    return [s.module.state_dict() for s in stages]


@pytest.mark.parametrize("name", ["fdg", "bp"])
def test_two_replicas_equal_one_up_to_rounding(name):
    # D = 2 averages two half-batch gradients: equal to the full-batch mean up to float rounding (no BN
    # here; with BatchNorm the batch statistics of a half batch differ, see docs/distributed.md).
    cfg = tiny_cfg(name, 2, replicas=2, batch_size=401)  # odd: unequal halves
    pipe, _, batches = build_pipeline(cfg)
    pipe.fit(batches, cfg.epochs, progress=False)
    summary = pipe.summary([])
    assert summary["replicas"] == 2 and summary["world_size"] == 4
    states = [s.module.state_dict() for s in pipe.stages]
    want = _sim_state(cfg)
    for got_k, want_k in zip(states, want):
        assert got_k.keys() == want_k.keys()
        for n in want_k:
            torch.testing.assert_close(got_k[n], want_k[n], rtol=1e-3, atol=1e-3)


def test_a_measured_partition_is_the_same_in_every_process():
    # "time" measures each layer: two processes would measure differently. Rank 0 measures, every rank
    # cuts where it did; the summary says where, and the simulator cut there gives the same result.
    summary = train(tiny_cfg("fdg", 3, partition="time", epochs=1))
    cuts = summary["boundaries"]
    assert len(cuts) == 2 and 0 < cuts[0] < cuts[1] < 4
    again = sim_summary(tiny_cfg("fdg", 3, partition=",".join(map(str, cuts)), epochs=1))
    assert summary["params_sha256"] == again["params_sha256"]


@pytest.mark.parametrize("name,K,D", [("ddg", 3, 1), ("fdg", 2, 2)])
def test_an_evaluation_of_several_chunks_equals_the_simulators(tmp_path, name, K, D):
    """A test set of 3 chunks (2,500 images, chunks of 1,000) crosses every boundary as several messages
    in a row, more than the transport keeps in flight."""
    import pickle

    import numpy as np
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for fname, n in [(f"data_batch_{i}", 16) for i in range(1, 6)] + [("test_batch", 2500)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        (folder / fname).write_bytes(pickle.dumps(batch))
    cfg = tiny_cfg(name, K, dataset="cifar10", data_root=str(tmp_path), batch_size=16, dtype="float32",
                   model_opts={"hidden": (16, 16, 16)}, replicas=D)
    got, want = train(cfg), sim_summary(cfg)
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-6 if D > 1 else 0)
    if D == 1:
        assert got["params_sha256"] == want["params_sha256"]
