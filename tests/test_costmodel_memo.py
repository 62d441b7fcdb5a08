"""IterationCostModel memoises whole iterations and attention kernels exactly: a hit must give the
same numbers bit for bit as a fresh computation, and a caller mutating a returned breakdown must
not corrupt later answers."""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.registry import load_cluster
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig


def _fresh(model, pool, cfg, decode, prefill, **kw):
    it = IterationCostModel(model, pool, cfg)
    return it._iteration(np.asarray(decode, dtype=np.int64), prefill, kw.get("with_breakdown", False),
                         kw.get("prefill_sampling"))


@pytest.mark.parametrize("name,cfg", [("llama-3.1-8b", ReplicaConfig(tp=1)),
                                      ("mixtral-8x7b", ReplicaConfig(tp=2)),
                                      ("deepseek-v3", ReplicaConfig(tp=8, weight_dtype="fp8"))])
def test_memoised_iterations_equal_fresh_ones(name, cfg):
    model = load_model(name)
    pool = load_cluster("h200-1x8").pools[0]
    it = IterationCostModel(model, pool, cfg)
    rng = np.random.default_rng(7)
    batches = []
    for _ in range(12):
        dec = rng.integers(1, 4000, size=int(rng.integers(0, 40)))
        pre = [(int(q), int(c)) for q, c in zip(rng.integers(1, 600, 2), rng.integers(0, 900, 2))][
            :int(rng.integers(0, 3))]
        batches.append((dec, pre))
    for dec, pre in batches + batches:  # second pass: every call is a hit
        for bd in (False, True):
            got = it.iteration(dec, pre, with_breakdown=bd)
            want = _fresh(model, pool, cfg, dec, pre, with_breakdown=bd)
            assert got == want
    # the key is (count, context sum): a permutation / another split with the same sum is a hit
    # and must equal its own fresh computation (decode attention is costed on the bytes read)
    a = it.iteration(np.array([100, 900, 3000]))
    b = it.iteration(np.array([3000, 500, 500]))
    assert a == b == _fresh(model, pool, cfg, [3000, 500, 500], [])


def test_breakdown_of_a_hit_is_a_private_copy():
    model = load_model("llama-3.1-8b")
    it = IterationCostModel(model, load_cluster("h200-1x8").pools[0], ReplicaConfig(tp=1))
    first = it.iteration(np.array([512] * 8), [(256, 0)], with_breakdown=True)
    first.breakdown["attention"] = -1.0
    first.breakdown.clear()
    again = it.iteration(np.array([512] * 8), [(256, 0)], with_breakdown=True)
    assert again.breakdown and again.breakdown.get("attention", 0.0) > 0
