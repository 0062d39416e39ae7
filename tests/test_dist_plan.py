"""The message plan, checked against the simulator: for every method, the messages each stage sends to
each neighbour, in order and with their shapes, are exactly the ones the plan derives from the schedule
(which is what lets the distributed engine post its receives early, headerless)."""
import collections

import pytest
import torch

from dist_cases import tiny_cfg
from torchdecoupled.build import build_run, build_stage
from torchdecoupled.engines.dist_plan import MessagePlan, feature_shapes
from torchdecoupled.engines.dist_layout import Layout, ReplicaBatches
from torchdecoupled.methods import METHODS
from torchdecoupled.schedule import run_tick
from torchdecoupled.transport import LocalTransport
from torchdecoupled.worker import Worker


class RecordingTransport(LocalTransport):
    def __init__(self):
        super().__init__()
        self.sent = collections.defaultdict(list)  # (src, dst) -> [(key, shape, dtype)]

    def send(self, key, tensor):
        self.sent[key[1], key[2]].append((key, tuple(tensor.shape), tensor.dtype))
        super().send(key, tensor)


@pytest.mark.parametrize("name,K", [(n, 2) for n in sorted(METHODS)] + [("fdg", 4), ("ddg", 3)])
def test_plan_is_what_the_simulator_sends(name, K):
    cfg = tiny_cfg(name, K, engine="sim", epochs=1, batch_size=600)  # 7 batches, the last one short
    run = build_run(cfg)
    stages = [build_stage(run, k) for k in range(K)]
    transport = RecordingTransport()
    workers = [Worker(s, run.schedule, run.batches, transport) for s in stages]
    for t in range(run.schedule.num_ticks):
        run_tick(run.schedule, t, lambda a: workers[a.stage].ready(a), lambda a: workers[a.stage].run(a))
    plan = MessagePlan(run.schedule, {}, feature_shapes(run.modules, run.batches.x), run.batches, 0, 1, 10, 4)
    for src in range(K):
        for dst in (src - 1, src + 1):
            if 0 <= dst < K:
                planned = [(key, *plan.shape(key)) for key in plan.between(src, dst)]
                assert planned == transport.sent[src, dst], (src, dst)


def test_plan_puts_evaluation_chunks_after_their_tick():
    cfg = tiny_cfg("fdg", 2, epochs=2, batch_size=1000)  # 4 batches per epoch
    run = build_run(cfg)
    plan = MessagePlan(run.schedule, {4: 0, 8: 1}, feature_shapes(run.modules, run.batches.x), run.batches,
                       0, 1, 2500, 1000)
    keys = list(plan.between(0, 1))
    assert [k[0] + str(k[3]) for k in keys] == (["act0", "act1", "act2", "act3", "act4", "eval0", "eval1",
                                                 "eval2", "act5", "act6", "act7", "eval3", "eval4", "eval5"])
    assert [plan.shape(k)[0][0] for k in keys if k[0] == "eval"] == [1000, 1000, 500] * 2
    assert list(plan.between(1, 0)) == [("grad", 1, 0, b) for b in range(8)]  # no evaluation goes down


@pytest.mark.parametrize("D", [2, 3])
def test_replica_slices_match_the_plan(D):
    run = build_run(tiny_cfg("fdg", 2, epochs=1, batch_size=600))
    for r in range(D):
        plan = MessagePlan(run.schedule, {}, [((4,), torch.float64)] * 2, run.batches, r, D, 10, 4)
        mine = ReplicaBatches(run.batches, r, D)
        for b in range(run.schedule.num_batches):
            assert plan.batch_len(b) == len(run.batches.indices(b))
            x, y = mine.get(b)
            assert x.shape[0] == y.shape[0] == plan.slice_len(b)
    full_x, full_y = run.batches.get(3)
    parts = [ReplicaBatches(run.batches, r, D).get(3) for r in range(D)]
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)


def test_rank_layout():
    lay = [Layout(3, 2, r) for r in range(6)]
    assert [(l.stage, l.replica) for l in lay] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert lay[0].ranks_of_stage(1) == [2, 3]
    assert lay[3].name() == "stage 1 (rank 3)"
