"""Pareto front (pure) and the decision plot: objective vs GPUs and J/token vs the SLO's latency
percentile, only the front and the chosen plan labelled, no label overlapping another (skipped
without matplotlib)."""

from __future__ import annotations

import builtins
import itertools

import pytest

from apex_opt.errors import InputError
from apex_opt.report.plot import decision_plot, metric, pareto_front

KEYS = [("thr", "max"), ("lat", "min")]


def _p(label, thr, lat, energy=None, slo=True):
    return {"label": label, "throughput_tokens_per_s": thr, "e2e_s": {"p90": lat},
            "energy_j_per_token": energy, "slo_met": slo, "thr": thr, "lat": lat}


def _brute_force(points, keys):
    def better_or_equal(a, b):
        return all((a[k] >= b[k]) if d == "max" else (a[k] <= b[k]) for k, d in keys)

    return [i for i, p in enumerate(points)
            if not any(better_or_equal(q, p) and any(q[k] != p[k] for k, _ in keys)
                       for j, q in enumerate(points) if j != i)]


def test_front_simple():
    pts = [_p("a", 100, 1.0), _p("b", 200, 2.0), _p("c", 150, 2.5), _p("d", 50, 0.5),
           _p("e", 200, 3.0)]
    # c is dominated by b (less throughput, more latency); e by b (same throughput, more latency)
    assert pareto_front(pts, KEYS) == [0, 1, 3]


def test_front_keeps_ties_and_skips_missing_values():
    pts = [_p("a", 100, 1.0), _p("b", 100, 1.0), {"label": "c", "thr": 500},
           {"label": "d", "thr": float("nan"), "lat": 0.1}, {"label": "e", "thr": True, "lat": 0.1}]
    assert pareto_front(pts, KEYS) == [0, 1]


def test_front_matches_brute_force_on_a_grid():
    vals = [1, 2, 3]
    pts = [{"thr": t, "lat": lat, "en": e} for t, lat, e in itertools.product(vals, vals, vals)]
    keys = [("thr", "max"), ("lat", "min"), ("en", "min")]
    assert pareto_front(pts, keys) == _brute_force(pts, keys) == [
        i for i, p in enumerate(pts) if p == {"thr": 3, "lat": 1, "en": 1}]
    pts2 = [{"thr": (i * 37) % 11, "lat": (i * 53) % 7} for i in range(40)]
    assert pareto_front(pts2, KEYS) == _brute_force(pts2, KEYS)


def test_front_input_errors():
    with pytest.raises(InputError):
        pareto_front([_p("a", 1, 1)], [])
    with pytest.raises(InputError, match="direction"):
        pareto_front([_p("a", 1, 1)], [("thr", "up")])  # type: ignore[list-item]


def test_metric_dotted_paths():
    p = _p("a", 10, 0.25, energy=0.5)
    assert metric(p, "e2e_s.p90") == 0.25
    assert metric(p, "energy_j_per_token") == 0.5
    assert metric(p, "e2e_s.p99") is None
    assert metric(p, "label") is None


def _plan(label, gpus, obj, e2e, energy, slo=True, chosen=False):
    return {"label": label, "gpus": gpus, "objective_value": obj, "slo_met": slo,
            "chosen": chosen, "metrics": {"e2e_s": {"p90": e2e}, "energy_j_per_token": energy}}


def _dense_plans():
    """30 plans, several at the same spot (twins that differ in a non-binding limit)."""
    out = []
    for i in range(30):
        g = 1 + i % 8
        out.append(_plan(f"{g}xTP{1 + i % 3}-variant{i}", g, 2.0 + 0.6 * g + (i % 5) * 0.1,
                         3.0 + (i % 7) * 0.4 - 0.2 * g, 1.0 + 0.3 * g + (i % 4) * 0.05,
                         slo=i % 6 != 5, chosen=i == 0))
    out += [dict(out[1], label="twin-a"), dict(out[1], label="twin-b")]
    return out


def _draw(pts, path, **kw):
    args = dict(objective="latency", latency_key="metrics.e2e_s.p90",
                caption="llama-3.1-70b on h100-sxm-1x8 · workload w · SLO s", title="t")
    args.update(kw)
    return decision_plot(pts, path, **args)


def test_missing_matplotlib_is_an_input_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(InputError, match=r"pip install 'apex-opt\[plot\]'"):
        _draw([_plan("a", 1, 1, 1, 1)], tmp_path / "x.png")


def test_bad_suffix_and_no_points(tmp_path):
    with pytest.raises(InputError, match="format"):
        _draw([_plan("a", 1, 1, 1, 1)], tmp_path / "x.jpg")
    with pytest.raises(InputError, match="nothing to plot"):
        _draw([], tmp_path / "x.png")


def test_only_the_front_and_the_chosen_plan_are_labelled_without_overlap(tmp_path):
    pytest.importorskip("matplotlib")
    pts = _dense_plans()
    stats = _draw(pts, tmp_path / "p.png")
    front_obj = set(pareto_front(pts, [("gpus", "min"), ("objective_value", "min")]))
    front_en = set(pareto_front(pts, [("metrics.e2e_s.p90", "min"),
                                      ("metrics.energy_j_per_token", "min")]))
    assert stats["objective"]["points"] == stats["energy"]["points"] == len(pts)
    assert stats["objective"]["front"] == len(front_obj)
    assert stats["energy"]["front"] == len(front_en)
    # labels: front + chosen, points at the same spot sharing one label -- never all plans
    assert 1 <= stats["objective"]["labels"] <= len(front_obj | {0}) < len(pts)
    assert 1 <= stats["energy"]["labels"] <= len(front_en | {0}) < len(pts)
    assert stats["objective"]["overlaps"] == 0 and stats["energy"]["overlaps"] == 0


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_is_written_and_deterministic(tmp_path, suffix):
    pytest.importorskip("matplotlib")
    pts = _dense_plans()
    _draw(pts, tmp_path / f"a{suffix}")
    _draw(pts, tmp_path / "sub" / f"b{suffix}")
    data = (tmp_path / f"a{suffix}").read_bytes()
    assert len(data) > 5000
    assert data == (tmp_path / "sub" / f"b{suffix}").read_bytes()
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert b"<svg" in data and b"Date" not in data


def test_throughput_objective_front_maximises(tmp_path):
    pytest.importorskip("matplotlib")
    pts = [_plan("a", 1, 0.5, 2, 1), _plan("b", 2, 0.9, 2, 1), _plan("c", 2, 0.4, 2, 1)]
    stats = _draw(pts, tmp_path / "t.png", objective="throughput")
    assert stats["objective"]["front"] == 2  # a (fewest GPUs) and b (highest rate per GPU)


def test_a_failed_write_leaves_neither_a_half_file_nor_a_temporary(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def half_then_fail(self, fname, *a, **k):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    target = tmp_path / "plans.png"
    with pytest.raises(InputError, match="cannot write plot"):
        _draw([_plan("a", 1, 1, 1, 1, chosen=True)], target)
    assert list(tmp_path.iterdir()) == []
