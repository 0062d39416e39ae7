"""schedule.eval_ticks: computed, not stored; the same ticks as the epochs' loss ticks and the drain."""
import resource
import subprocess
import sys

import pytest

from torchdecoupled.schedule import FAMILIES, Schedule, eval_ticks


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_ticks_follow_each_epochs_last_loss_and_the_drain(family):
    for K, per_epoch, epochs in [(1, 1, 1), (2, 3, 1), (3, 2, 4), (4, 5, 3)]:
        s = Schedule(family, K, per_epoch * epochs)
        want = {s.loss_tick((e + 1) * per_epoch - 1): e for e in range(epochs - 1)} | {s.num_ticks - 1: epochs - 1}
        evals = eval_ticks(s, per_epoch, epochs)
        assert dict(evals) == want and list(evals) == sorted(want) and len(evals) == epochs
        assert [t for t in range(-2, s.num_ticks + 2) if t in evals] == sorted(want)
        with pytest.raises(KeyError):
            evals[s.num_ticks]


PLAN_1E11 = """
import time, tracemalloc
from torchdecoupled.engines.dist_plan import MessagePlan
from torchdecoupled.methods import get_method
from torchdecoupled.schedule import Schedule, eval_ticks
m, epochs, per_epoch = get_method("fdg"), 10**11, 50
tracemalloc.start()
start = time.perf_counter()
s = Schedule(m.family, 4, epochs * per_epoch, m.order, m.accumulate)  # as Pipeline._fit_sim, StageProcess
evals = eval_ticks(s, per_epoch, epochs)
first = s.loss_tick(per_epoch - 1)
assert first in evals and evals[first] == 0 and evals[s.num_ticks - 1] == epochs - 1
assert first + 1 not in evals and s.num_ticks - 2 not in evals
plan = MessagePlan(s, evals, [], lambda b: 1, [1, 1], replica=0)  # a channel's message order, read lazily
head = [k for _, k in zip(range(12 * per_epoch), plan.between(0, 1))]
assert ("eval", 0, 1, 0) in head and ("eval", 0, 1, 2) in head
print(time.perf_counter() - start, tracemalloc.get_traced_memory()[1])
"""


def test_a_run_of_1e11_epochs_plans_in_no_time_and_memory():
    # in a child with 4 GiB of address space: an eager table of 1e11 entries fails there, not on this machine
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    r = subprocess.run([sys.executable, "-c", PLAN_1E11], capture_output=True, text=True, timeout=60,
                       preexec_fn=limit)
    assert r.returncode == 0, r.stderr[-2000:]
    took, peak = map(float, r.stdout.split())
    assert took < 0.5 and peak < 1_000_000, (took, peak)
