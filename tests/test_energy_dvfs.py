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


# --- the V-f curve against its published source ----------------------------------------------
# Perseus (SOSP'24) artifact, github.com/ml-energy/zeus @ 38cb3f90 "Artifact release",
# sosp24_data/emulation/stage_profile/<model>+a100_sxm_bf16.csv, stage 0: (requested SM clock MHz,
# instruction, seconds, joules) of one pipeline stage's forward / backward on an A100-80G SXM.
# GPT-3 175B is what a100-sxm-80gb.yaml's voltage_curve was derived from; BLOOM is held out.
PERSEUS_GPT3 = [
    (1410, "forward", 0.05016, 23.805), (1410, "backward", 0.09295, 44.584),
    (1275, "forward", 0.05296, 21.250), (1275, "backward", 0.09782, 38.982),
    (1200, "forward", 0.05606, 19.260), (1200, "backward", 0.10297, 35.959),
    (1110, "forward", 0.06035, 17.865), (1110, "backward", 0.11014, 33.262),
    (1005, "forward", 0.06649, 17.781), (1005, "backward", 0.12092, 33.115),
    (900, "forward", 0.07376, 18.048), (900, "backward", 0.13322, 33.085),
]
PERSEUS_BLOOM = [
    (1410, "forward", 0.05123, 24.151), (1410, "backward", 0.09906, 45.966),
    (1275, "forward", 0.05405, 20.134), (1275, "backward", 0.10315, 39.687),
    (1200, "forward", 0.05711, 18.580), (1200, "backward", 0.10839, 36.337),
    (1110, "forward", 0.06133, 17.009), (1110, "backward", 0.11587, 33.123),
    (1005, "forward", 0.06740, 17.002), (1005, "backward", 0.12696, 33.142),
    (900, "forward", 0.07454, 17.167), (900, "backward", 0.13948, 33.599),
]
A100 = load_device("a100-sxm-80gb")


def _stage(rows, inst):
    return [(f, t, e) for f, i, t, e in rows if i == inst]


@pytest.mark.parametrize("rows, tol", [(PERSEUS_GPT3, 0.015), (PERSEUS_BLOOM, 0.035)])
def test_a100_voltage_curve_passes_through_the_published_sweep(rows, tol):
    # source rows within 0.015 (rounding of the file's points); the held-out model within the
    # 0.035 spread the yaml states between the two models of the same artifact
    from apex_opt.costmodel.power import voltage_from_sweep

    m = dvfs_model(A100)
    for inst in ("forward", "backward"):
        pts = voltage_from_sweep(_stage(rows, inst), A100.idle_power_w, 1270)
        f_top = pts[-1][0]
        assert 1320 < f_top < 1370          # the 1410 request ran at ~1345 MHz (power-held)
        for f, v in pts:
            assert m.voltage(f) / m.voltage(f_top) == pytest.approx(v, abs=tol), (inst, f)


def _perseus_power_errors(m, rows, inst):
    """(model / measured - 1) of the stage's average power at 1275 / 1200 / 1005 / 900 MHz, the
    model's work built from the top row (time split from the sweep's own T = a + b / f)."""
    st = sorted(_stage(rows, inst), reverse=True)
    f = np.array([r[0] for r in st])
    t = np.array([r[1] for r in st])
    e = np.array([r[2] for r in st])
    low = f < 1270
    a, b = np.linalg.lstsq(np.vstack([np.ones(low.sum()), 1 / f[low]]).T, t[low], rcond=None)[0]
    f_eff = b / (t - a)
    w0 = IterationWork(0.0, a, b / m.f_max, 0.0, 0.0)
    e_cmp = (e[0] - m.base_power(f_eff[0]) * m.gpu_time(w0, f_eff[0])) / m.voltage(f_eff[0]) ** 2
    w = IterationWork(0.0, a, b / m.f_max, 0.0, e_cmp)
    out = []
    for i in range(1, len(f)):
        assert m.gpu_time(w, f_eff[i]) / m.gpu_time(w, f_eff[0]) == pytest.approx(t[i] / t[0], rel=0.01)
        out.append(m.power(w, f_eff[i]) / (e[i] / t[i]) - 1)
    return out


def test_a100_power_at_lower_clocks_matches_held_out_sweep():
    import dataclasses

    m = dvfs_model(A100)
    for inst in ("forward", "backward"):
        assert max(abs(x) for x in _perseus_power_errors(m, PERSEUS_BLOOM, inst)) < 0.07
        assert max(abs(x) for x in _perseus_power_errors(m, PERSEUS_GPT3, inst)) < 0.03
    # the straight line this file replaced (0.82 at the minimum clock) overestimates by 20-34 %
    line = dataclasses.replace(m, curve=(), f_knee=210.0, v_knee=0.82)
    assert max(_perseus_power_errors(line, PERSEUS_BLOOM, "forward")) > 0.25


def test_voltage_curves_monotonic_and_floored():
    for name in ("h100-sxm-80gb", "h200-sxm-141gb", "h100-pcie-80gb", "a100-sxm-80gb"):
        m = dvfs_model(load_device(name))
        fs = np.linspace(m.f_min, m.f_max, 60)
        vs = [m.voltage(f) for f in fs]
        assert all(b >= a for a, b in zip(vs, vs[1:])) and vs[-1] == 1.0
        assert vs[0] == m.curve[0][1]        # flat below the first (floor) point
    with pytest.raises(InputError, match="voltage_curve"):
        from apex_opt.io import validate
        from apex_opt.specs.cluster import DeviceSpec

        d = A100.model_dump()
        d["voltage_curve"] = [[1000, 0.8], [1300, 1.0]]   # does not end at the max clock
        validate(DeviceSpec, d, "test")


def test_energy_optimal_clock_beats_max_clock_on_memory_bound_decode():
    from apex_opt.costmodel.power import candidate_sm_clocks

    def j_per_token(f):
        c = _decode(_cm(sm_clock_mhz=f), batch=16)
        host = c.time_s - c.busy_gpu_s
        return (c.energy_j + host * 130.0) / 16
    per = {f: j_per_token(f) for f in candidate_sm_clocks(H100)}
    best = min(per, key=per.get)
    assert best < 1980 and per[best] < 0.95 * per[1980]
    # ... and it costs little time: memory-bound
    assert _decode(_cm(sm_clock_mhz=best), 16).time_s < 1.08 * _decode(_cm(sm_clock_mhz=1980), 16).time_s


def test_compute_bound_work_slows_about_inversely_with_clock():
    # both locks below the clock the 700 W limit settles a prefill at (~1.3-1.4 GHz)
    t8, t10 = (_prefill(_cm(sm_clock_mhz=f)).time_s for f in (800, 1000))
    assert 1.15 < t8 / t10 <= 1000 / 800 + 1e-9


@pytest.mark.parametrize("cap", [400.0, 500.0, 600.0])
def test_cap_settles_where_power_meets_it(cap):
    c = _prefill(_cm(power_cap_w=cap))
    host = c.time_s - c.busy_gpu_s
    avg = (c.energy_j + host * _cm(power_cap_w=cap).idle_power_w) / c.time_s
    assert avg == pytest.approx(cap, rel=0.03)
