"""The message plan, checked against the simulator: for every method, the messages each stage sends to
each neighbour, in order and with their shapes, are exactly the ones the plan derives from the schedule
(which is what lets the distributed engine post its receives early, headerless)."""
import collections

import pytest
import torch

from dist_cases import tiny_cfg
from torchdecoupled.build import build_run, build_stage
from torchdecoupled.engines.dist_feed import pack, split_slices, unpack
from torchdecoupled.engines.dist_layout import Layout
from torchdecoupled.engines.dist_plan import Boundary, MessagePlan
from torchdecoupled.methods import METHODS
from torchdecoupled.schedule import run_tick
from torchdecoupled.transport import LocalTransport
from torchdecoupled.worker import Worker


def boundaries(modules, x):
    out = []
    with torch.no_grad():
        for m in modules:
            x = m.eval()(x[:1])
            out.append(Boundary.of(x))
    return out


def sizes(run):
    return lambda b: len(run.batches.indices(b))


class RecordingTransport(LocalTransport):
    def __init__(self):
        super().__init__()
        self.sent = collections.defaultdict(list)  # (src, dst) -> [(key, shape, dtype)]

    def send(self, key, tensor):
        first = tensor[0] if isinstance(tensor, (tuple, list)) else tensor  # PETRA: (activation, gradient); MAN: params
        self.sent[key[1], key[2]].append((key, tuple(first.shape), first.dtype))
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
    plan = MessagePlan(run.schedule, {}, boundaries(run.modules, run.batches.x), sizes(run), [4, 4, 2], 0,
                       carries_input=stages[0].carries_input,
                       param_shapes={k: s.param_shapes() for k, s in enumerate(stages) if k and run.schedule.params})
    for src in range(K):
        for dst in (src - 1, src + 1):
            if 0 <= dst < K:
                planned = [(key, *plan.shapes(key)[0]) for key in plan.between(src, dst)]
                assert planned == transport.sent[src, dst], (src, dst)


def test_plan_puts_evaluation_chunks_after_their_tick():
    cfg = tiny_cfg("fdg", 2, epochs=2, batch_size=1000)  # 4 batches per epoch
    run = build_run(cfg)
    plan = MessagePlan(run.schedule, {4: 0, 8: 1}, boundaries(run.modules, run.batches.x), sizes(run),
                       [1000, 1000, 500], 0)
    keys = list(plan.between(0, 1))
    assert [k[0] + str(k[3]) for k in keys] == (["act0", "act1", "act2", "act3", "act4", "eval0", "eval1",
                                                 "eval2", "act5", "act6", "act7", "eval3", "eval4", "eval5"])
    assert [plan.shapes(k)[0][0][0] for k in keys if k[0] == "eval"] == [1000, 1000, 500] * 2
    assert list(plan.between(1, 0)) == [("grad", 1, 0, b) for b in range(8)]  # no evaluation goes down


@pytest.mark.parametrize("D", [2, 3])
def test_replica_slices_cover_the_batch(D):
    x, y = torch.arange(13.0).view(13, 1), {"t": torch.arange(13), "m": torch.ones(13, 2, dtype=torch.bool)}
    xs, ys = split_slices(x, D), split_slices(y, D)
    assert [len(p) for p in xs] == [len(p) for p in torch.arange(13).tensor_split(D)]  # the first 13 % D get one more
    assert torch.equal(torch.cat(xs), x)
    assert torch.equal(torch.cat([p["t"] for p in ys]), y["t"]) and all(p["m"].shape[1] == 2 for p in ys)


def test_a_structured_boundary_travels_as_its_leaves():
    out = (torch.zeros(5, 3), {"mask": torch.ones(5, 2, dtype=torch.bool), "skip": torch.zeros(5, 4)})
    bd = Boundary.of(out)
    assert bd.grads == [0, 2]  # the floating leaves carry gradients; the mask does not
    plan = MessagePlan(None, {}, [bd, bd], lambda b: 5, [], 0)
    act, grad = ("act", 0, 1, 0), ("grad", 1, 0, 0)
    assert [s for s, _ in plan.shapes(act)] == [(5, 3), (5, 2), (5, 4)]
    assert [s for s, _ in plan.shapes(grad)] == [(5, 3), (5, 4)]
    back = plan.unflatten(grad, plan.flatten(grad, (out[0], {"mask": None, "skip": out[1]["skip"]})))
    assert back[1]["mask"] is None and back[1]["skip"] is out[1]["skip"]
    with pytest.raises(RuntimeError, match="same structure for every batch"):
        plan.flatten(act, out[0])


def test_rank_layout():
    lay = [Layout(3, 2, r) for r in range(6)]
    assert [(l.stage, l.replica) for l in lay] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert lay[0].ranks_of_stage(1) == [2, 3]
    assert lay[3].name() == "stage 1 (rank 3)"


def test_a_data_message_carries_every_tensor_exactly():
    """Rank 0's data messages pickle tensors as dtype, shape and bytes (``dist_feed.pack``): every dtype, an
    empty, a 0-d and a transposed tensor come back equal, contiguous and writable; other leaves unchanged."""
    import pickle
    tree = {"x": torch.randn(3, 4), "t": torch.randn(4, 6).t(), "bf16": torch.randn(5, dtype=torch.bfloat16),
            "ids": torch.randint(0, 9, (7,)), "mask": torch.tensor([True, False]), "empty": torch.zeros(0, 3),
            "scalar": torch.tensor(2.5, dtype=torch.float64), "c": torch.randn(2, dtype=torch.complex64),
            "other": ("name", 4, None)}
    back = unpack(pickle.loads(pickle.dumps(pack(tree))))
    assert back["other"] == ("name", 4, None)
    for k, t in tree.items():
        if isinstance(t, torch.Tensor):
            got = back[k]
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), k
            assert got.is_contiguous()
    back["x"].add_(1)  # writable, and not the sender's memory
    assert not torch.equal(back["x"], tree["x"])
