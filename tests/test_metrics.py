"""Serving metrics: hand-computed example, SLO attainment/goodput, utilisation checks, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex_opt.sim.metrics import Metrics, compute_metrics, round_sig, stats_of
from apex_opt.specs.slo import SLOSpec

# Four requests; request 3 is dropped (its times are garbage and must be ignored).
ARR = np.array([0.0, 1.0, 2.0, 3.0])
FIRST = np.array([0.5, 1.2, 3.0, np.nan])
FINISH = np.array([2.5, 1.2, 4.0, np.nan])
OUT = np.array([5, 1, 11, 7])
PROMPT = np.array([100, 50, 200, 80])
DROP = np.array([False, False, False, True])
# By hand:
#   TTFT ms = [500, 200, 1000]            TPOT ms = [(2.0/4)*1e3 = 500, -, (1.0/10)*1e3 = 100]
#   E2E s   = [2.5, 0.2, 2.0]             output tokens done = 17, prompt done = 350
MAKESPAN = 5.0


def _m(**kw) -> Metrics:
    return compute_metrics(ARR, FIRST, FINISH, OUT, PROMPT, DROP, makespan_s=MAKESPAN, **kw)


def test_hand_computed_example():
    m = _m(energy_j=3400.0, breakdown={"gemm": 1.5, "attention": 0.25}, preemptions=2)
    assert (m.num_requests, m.num_completed, m.num_dropped) == (4, 3, 1)
    assert m.ttft_ms.count == 3 and m.ttft_ms.mean == pytest.approx(1700 / 3, rel=1e-5)
    assert m.ttft_ms.p50 == 500.0 and m.ttft_ms.max == 1000.0
    # linear percentile of [200, 500, 1000] at 90: 500 + 0.8 * 500 = 900
    assert m.ttft_ms.p90 == 900.0 and m.ttft_ms.p99 == 990.0
    assert m.tpot_ms.count == 2 and m.tpot_ms.mean == 300.0 and m.tpot_ms.p50 == 300.0
    assert m.tpot_ms.p90 == 460.0  # 100 + 0.9 * 400
    assert m.e2e_s.mean == pytest.approx(4.7 / 3, rel=1e-5) and m.e2e_s.p50 == 2.0
    assert m.throughput_tokens_per_s == 17 / 5
    assert m.throughput_total_tokens_per_s == 367 / 5
    assert m.requests_per_s == 0.6
    assert m.energy_j == 3400.0 and m.energy_j_per_token == 200.0
    assert m.energy_j_per_request == pytest.approx(3400 / 3, rel=1e-5)
    assert m.avg_power_w == 680.0
    assert m.time_breakdown_ms == {"attention": 250.0, "gemm": 1500.0}
    assert m.preemptions == 2 and m.makespan_s == 5.0
    assert m.slo_attainment is None and m.slo_met is None and m.goodput_requests_per_s is None
    assert m.mfu is None and m.mbu is None


def test_slo_attainment_goodput_and_percentile_targets():
    # TTFT <= 600 ms: requests 0, 1 pass (2 of 4 = 50 %); TPOT <= 400 ms: req 0 fails (500),
    # req 1 has one token (passes), req 2 passes; dropped request fails everything.
    slo = SLOSpec.model_validate({"ttft_ms": {"target": 600, "percentile": 50},
                                  "tpot_ms": {"target": 400, "percentile": 50},
                                  "attainment": 0.25})
    m = _m(slo=slo)
    assert m.slo_target_fraction == {"ttft_ms": 0.5, "tpot_ms": 0.5}
    assert m.slo_attainment == 0.25  # only request 1 meets both
    assert m.goodput_requests_per_s == 0.2
    assert m.slo_met is True
    # the same targets at p90 do not hold
    strict = SLOSpec.model_validate({"ttft_ms": 600, "tpot_ms": 400, "attainment": 0.25})
    assert _m(slo=strict).slo_met is False
    # attainment requirement above what is achieved
    high = slo.model_copy(update={"attainment": 0.3})
    assert _m(slo=high).slo_met is False
    # an E2E target that everything completed meets: dropped request still counts against
    e2e = SLOSpec.model_validate({"e2e_s": {"target": 10, "percentile": 75}, "attainment": 0.75})
    me = _m(slo=e2e)
    assert me.slo_attainment == 0.75 and me.slo_met is True
    e2e_hi = SLOSpec.model_validate({"e2e_s": {"target": 10, "percentile": 76}})
    assert _m(slo=e2e_hi).slo_met is False


def test_slo_without_targets_gives_no_attainment():
    m = _m(slo=SLOSpec(objective="energy"))
    assert m.slo_attainment is None and m.slo_met is None


def test_mfu_mbu_and_inconsistent_inputs():
    m = _m(flops=2.5e15, peak_flops=1e15, bytes=1e12, peak_bytes_per_s=1e12)
    assert m.mfu == 0.5 and m.mbu == 0.2
    with pytest.raises(ValueError, match="MFU"):
        _m(flops=6e15, peak_flops=1e15)
    with pytest.raises(ValueError, match="MBU"):
        _m(bytes=6e12, peak_bytes_per_s=1e12)
    with pytest.raises(ValueError):
        _m(flops=-1.0, peak_flops=1e15)


@pytest.mark.parametrize("kw", [
    dict(first=np.array([0.5, 0.9, 3.0, np.nan])),   # first token before arrival
    dict(finish=np.array([0.4, 1.2, 4.0, np.nan])),  # finish before first token
    dict(first=np.array([0.5, np.nan, 3.0, np.nan])),  # completed request without a time
    dict(out=np.array([5, 0, 11, 7])),
])
def test_inconsistent_request_arrays(kw):
    with pytest.raises(ValueError):
        compute_metrics(ARR, kw.get("first", FIRST), kw.get("finish", FINISH), kw.get("out", OUT),
                        PROMPT, DROP, makespan_s=MAKESPAN)


def test_bad_scalars():
    with pytest.raises(ValueError, match="makespan"):
        compute_metrics(ARR, FIRST, FINISH, OUT, PROMPT, DROP, makespan_s=0.0)
    with pytest.raises(ValueError, match="energy"):
        _m(energy_j=float("nan"))
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics(ARR[:3], FIRST, FINISH, OUT, PROMPT, DROP, makespan_s=1.0)


def test_all_dropped():
    m = compute_metrics(ARR, FIRST, FINISH, OUT, PROMPT, np.ones(4, bool), makespan_s=1.0,
                        energy_j=10.0, slo=SLOSpec.model_validate({"ttft_ms": 1000}))
    assert m.num_completed == 0 and m.ttft_ms.count == 0 and m.ttft_ms.mean is None
    assert m.throughput_tokens_per_s == 0 and m.energy_j_per_token is None
    assert m.slo_attainment == 0 and m.slo_met is False


def test_json_is_deterministic_and_rounded():
    rng = np.random.default_rng(1)
    n = 1000
    arr = np.sort(rng.random(n) * 100)
    first = arr + rng.random(n)
    fin = first + rng.random(n) * 10
    out = rng.integers(1, 500, n)
    a = _dump(arr, first, fin, out)
    b = _dump(arr.copy(), first.copy(), fin.copy(), out.copy())
    assert a == b
    d = json.loads(a)
    for v in (d["ttft_ms"]["mean"], d["e2e_s"]["p99"], d["throughput_tokens_per_s"]):
        assert v == round_sig(v)
        assert len(repr(v).replace(".", "").replace("-", "").lstrip("0").split("e")[0]) <= 6


def _dump(arr, first, fin, out) -> str:
    m = compute_metrics(arr, first, fin, out, out * 3, None, makespan_s=123.456789,
                        energy_j=98765.4321, slo=SLOSpec.model_validate({"ttft_ms": 800}))
    return json.dumps(m.model_dump(mode="json"), indent=2)


def test_round_sig():
    assert round_sig(123456789.0) == 123457000.0
    assert round_sig(0.000123456789) == 0.000123457
    assert round_sig(0.0) == 0.0 and round_sig(-2.5) == -2.5


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_stats_match_numpy(values):
    s = stats_of(np.array(values))
    v = np.array(values)
    assert s.count == len(values)
    assert s.p50 == pytest.approx(np.percentile(v, 50), rel=1e-5, abs=1e-300)
    assert s.max == pytest.approx(v.max(), rel=1e-5, abs=1e-300)
    assert s.p50 <= s.p90 <= s.p99 <= s.max


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 2 ** 32), target=st.floats(1, 2000))
def test_attainment_consistent_with_percentiles(n, seed, target):
    """The fraction meeting a TTFT target is >= p/100 exactly when the p-th percentile
    (inverted CDF) is within target; and attainment <= every per-target fraction."""
    rng = np.random.default_rng(seed)
    arr = np.sort(rng.random(n) * 10)
    first = arr + rng.random(n) * 3
    fin = first + rng.random(n) * 5
    out = rng.integers(1, 50, n)
    drop = rng.random(n) < 0.1
    slo = SLOSpec.model_validate({"ttft_ms": {"target": target, "percentile": 50},
                                  "tpot_ms": 60, "attainment": 0.5})
    m = compute_metrics(arr, first, fin, out, out, drop, makespan_s=20.0, slo=slo)
    frac = m.slo_target_fraction
    assert m.slo_attainment <= min(frac.values()) + 1e-6
    ttft = np.where(drop, np.inf, (first - arr) * 1e3)
    p50 = np.percentile(ttft, 50, method="inverted_cdf")
    assert (frac["ttft_ms"] >= 0.5) == (p50 <= target)
    assert m.goodput_requests_per_s <= m.requests_per_s + 1e-9
