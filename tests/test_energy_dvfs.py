"""DVFS: SM clock and power cap as plan settings (costmodel/power.py, IterationCostModel)."""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.costmodel.power import IterationWork, check_gpu_settings, dvfs_model
from apex_opt.errors import InputError
from apex_opt.registry import load_cluster, load_device
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig

H100 = load_device("h100-sxm-80gb")


def _cm(**kw) -> IterationCostModel:
    pool = load_cluster("h100-sxm-1x8").pools[0]
    return IterationCostModel(load_model("llama-3.1-8b"), pool, ReplicaConfig(**kw))


def _decode(cm, batch=8):  # memory-bound: weights streamed once for a small batch
    return cm.iteration(np.full(batch, 1000))


def _prefill(cm):  # compute-bound: 4096 prompt tokens
    return cm.iteration(np.zeros(0, dtype=np.int64), [(4096, 0)])


def test_default_unchanged_by_knob_fields():
    base, same = _cm(), _cm(sm_clock_mhz=None, power_cap_w=None)
    assert _prefill(base) == _prefill(same)
    assert _decode(base).sm_clock_mhz is None           # memory-bound: under the limit, boost clock


def test_board_limit_throttles_a_compute_bound_iteration_by_default():
    c = _prefill(_cm())
    assert c.sm_clock_mhz is not None and 1200 < c.sm_clock_mhz < 1980
    assert c.energy_j / c.busy_gpu_s == pytest.approx(700, rel=0.02)  # sits at the 700 W limit


def test_lower_clock_slows_compute_bound_far_more_than_memory_bound():
    hi, lo = _cm(sm_clock_mhz=1980), _cm(sm_clock_mhz=1000)
    pre_slow = _prefill(lo).time_s / _prefill(hi).time_s
    dec_slow = _decode(lo).time_s / _decode(hi).time_s
    assert pre_slow > 1.3            # compute-bound: ~1/clock on its compute share
    assert dec_slow < 1.06           # memory-bound: barely
    assert pre_slow > 5 * (dec_slow - 1) + 1


def test_lower_clock_lowers_power_and_is_monotonic():
    clocks = [1980, 1700, 1400, 1100, 800]
    pw = []
    for f in clocks:
        c = _prefill(_cm(sm_clock_mhz=f))
        pw.append(c.energy_j / c.busy_gpu_s)
    # 1980 / 1700 MHz: the prefill is power-limited below both (same clock, ~700 W); lower
    # locks bind and every step down lowers the power
    assert all(a >= b - 1e-6 for a, b in zip(pw, pw[1:]))
    assert pw[2] > pw[3] > pw[4] and pw[0] > pw[4] + 150
    times = [_prefill(_cm(sm_clock_mhz=f)).time_s for f in clocks]
    assert all(a <= b * (1 + 1e-9) for a, b in zip(times, times[1:]))


def test_dynamic_power_superlinear_in_clock():
    m = dvfs_model(H100)
    w = IterationWork(t_host=0.0, t_other=0.0, t_cmp=0.01, e_mem=0.0, e_cmp=5.0)
    p = {f: m.power(w, f) - m.p_idle for f in (990.0, 1980.0)}
    assert p[1980.0] / p[990.0] > 2.0  # f * V(f)^2 with V rising: more than linear


def test_power_cap_settles_the_clock():
    m = dvfs_model(H100)
    w = IterationWork(t_host=0.001, t_other=0.004, t_cmp=0.02, e_mem=1.0, e_cmp=14.0)
    for cap in (300.0, 450.0, 600.0):
        f = m.settle(w, None, cap)
        assert m.f_min < f < m.f_max
        assert m.power(w, f) == pytest.approx(cap, rel=1e-6)
    assert m.settle(w, None, 300.0) < m.settle(w, None, 450.0) < m.settle(w, None, 600.0)
    # a locked clock below the cap's clock wins
    assert m.settle(w, 800, 600.0) == 800


def test_cap_in_cost_model_limits_power():
    cap = 400.0
    c = _prefill(_cm(power_cap_w=cap))
    host = c.time_s - c.busy_gpu_s
    cm = _cm(power_cap_w=cap)
    avg = (c.energy_j + host * cm.idle_power_w) / c.time_s
    assert avg <= cap * 1.02
    assert c.sm_clock_mhz < 1980
    assert c.time_s > _prefill(_cm()).time_s


def test_out_of_range_settings_are_input_errors():
    with pytest.raises(InputError, match="345-1980 MHz"):
        check_gpu_settings(H100, 3000, None)
    with pytest.raises(InputError, match="200-700 W"):
        check_gpu_settings(H100, None, 150.0)
    with pytest.raises(InputError, match="no SM clock range"):
        check_gpu_settings(load_device("b200"), 1200, None)
    with pytest.raises(InputError):
        _cm(sm_clock_mhz=100)


def test_label_shows_setting():
    assert ReplicaConfig(tp=2, sm_clock_mhz=1410, power_cap_w=500).label() == "TP2-1410MHz-500W"
    assert ReplicaConfig(tp=2).label() == "TP2"


def test_cli_rejects_clock_outside_range():
    from click.testing import CliRunner

    from apex_opt.cli import main

    r = CliRunner().invoke(main, ["estimate", "--model", "llama-3.1-8b", "--tp", "1", "--batch",
                                  "decode:8x100", "--sm-clock-mhz", "99"])
    assert r.exit_code == 2
    assert "--sm-clock-mhz" in r.output and "345-1980" in r.output


def test_candidate_settings_inside_the_device_range():
    from apex_opt.costmodel.power import candidate_power_caps, candidate_sm_clocks

    clocks = candidate_sm_clocks(H100)
    assert clocks[0] == 1980 and 1590 in clocks and clocks == sorted(clocks, reverse=True)
    caps = candidate_power_caps(H100)
    assert caps and all(200 <= c < 700 for c in caps)
    for c in clocks:
        check_gpu_settings(H100, c, None)
    assert candidate_sm_clocks(load_device("b200")) == [] and candidate_power_caps(load_device("b200")) == []
