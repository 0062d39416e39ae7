"""Failure behaviour of the distributed engine: a stage that dies, raises or stops makes the whole run
stop quickly with a message naming the stage, the rank and the tick, and leaves no process behind; bad
configurations fail at once with one clear line."""
import re
import socket
import time

import pytest

from dist_cases import stage_processes, tiny_cfg
from torchdecoupled.data import load_dataset
from torchdecoupled.engines.dist import DistributedError
from torchdecoupled.run import train

FAULT = "TORCHDECOUPLED_FAULT"


@pytest.fixture(scope="module", autouse=True)
def cached_data():
    load_dataset("mnist1d")


def _fail(monkeypatch, spec, **kw):
    monkeypatch.setenv(FAULT, spec)
    t0 = time.monotonic()
    with pytest.raises(DistributedError) as e:
        train(tiny_cfg("fdg", 2, **kw))
    return str(e.value), time.monotonic() - t0


@pytest.mark.parametrize("kind,how", [("exit", r"exit code 3"), ("kill", r"killed by SIGKILL"),
                                      ("raise", r"RuntimeError: injected fault")])
def test_a_stage_that_dies_or_raises_stops_everything(monkeypatch, kind, how):
    msg, took = _fail(monkeypatch, f"1:5:{kind}")
    assert re.search(r"stage 1 \(rank 1\) (died|failed) at tick 5", msg), msg
    assert re.search(how, msg), msg
    assert took < 10, took
    assert not stage_processes()


def test_a_dying_replica_is_named(monkeypatch):
    msg, took = _fail(monkeypatch, "0:3:kill", replicas=2)
    assert re.search(r"stage 0 \(rank [01]\) died at tick 3 \(killed by SIGKILL\)", msg), msg
    assert took < 10 and not stage_processes()


def test_a_stopped_stage_is_reported_after_the_timeout(monkeypatch):
    msg, took = _fail(monkeypatch, "1:5:stop", timeout=3.0)
    # stage 0 waits for stage 1's gradient and gives up after 3 s; the launcher sees stage 1 is stopped
    assert msg.startswith("distributed run failed: stage 1 (rank 1) stopped at tick 5 (its process is stopped"), msg
    assert re.search(r"stage 0 \(rank 0\) failed at tick \d+: PeerTimeout: waiting for gradient of batch \d+ "
                     r"from stage 1 \(rank 1\): nothing for 3 s", msg), msg
    assert 3 <= took < 3 + 10, took
    assert not stage_processes()


def test_a_child_exits_when_the_launcher_is_gone():
    from torchdecoupled.engines.dist_launch import _context, _exit_with_launcher
    ctx = _context()
    here, there = ctx.Pipe()
    child = ctx.Process(target=_exit_with_launcher, args=(there,), daemon=True)  # what every child runs
    child.start()
    there.close()
    child.join(0.5)
    assert child.is_alive()                 # waits as long as the launcher holds its end
    here.close()                            # the launcher dies: its end of the pipe closes
    child.join(5)
    assert child.exitcode == 1


def test_bad_fault_spec_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(FAULT, "1:x")
    with pytest.raises(ValueError, match=r"bad TORCHDECOUPLED_FAULT='1:x' \(want stage:tick:kind"):
        train(tiny_cfg())


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"^unknown backend 'mpi2' \(valid: gloo, nccl\)$"):
        train(tiny_cfg(backend="mpi2"))


def test_nccl_without_cuda():
    with pytest.raises(ValueError, match=r"backend 'nccl' needs CUDA GPUs"):
        train(tiny_cfg(backend="nccl"))


def test_too_many_processes_for_one_machine(monkeypatch):
    monkeypatch.setenv("TORCHDECOUPLED_MAX_PROCS", "6")
    with pytest.raises(ValueError, match=r"4 stages x 2 replicas = 8 processes is more than 6 on one machine"):
        train(tiny_cfg(stages=4, replicas=2))


def test_configuration_errors_found_while_setting_up_stay_one_line():
    with pytest.raises(ValueError, match=r"^batch 1 has 1 samples, fewer than the 3 replicas that split it: use "
                                         r"batches of at least 3 \(drop_last=True drops a short last batch\)$"):
        train(tiny_cfg(replicas=3, batch_size=3999))


def test_torchrun_world_size_must_be_stages_times_replicas(monkeypatch):
    for k, v in {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=r"this run has 3 processes \(WORLD_SIZE=3\) but 2 stages x 1 replicas "
                                         r"need 2: launch with --nnodes x --nproc-per-node = 2"):
        train(tiny_cfg())


def test_port_in_use_is_named_not_a_hang():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ValueError, match=rf"port {port} on 127.0.0.1 is already in use"):
            train(tiny_cfg(init_method=f"tcp://127.0.0.1:{port}"))
        assert time.monotonic() - t0 < 2


def test_a_free_init_method_port_works():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary = train(tiny_cfg("bp", 2, init_method=f"tcp://127.0.0.1:{port}", epochs=1))
    assert summary["world_size"] == 2
