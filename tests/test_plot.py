"""Pareto front (pure) and the Pareto plot (skipped without matplotlib)."""

from __future__ import annotations

import builtins
import itertools

import pytest

from apex_opt.errors import InputError
from apex_opt.report.plot import metric, pareto_front, pareto_plot

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


def test_missing_matplotlib_is_an_input_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(InputError, match=r"pip install 'apex-opt\[plot\]'"):
        pareto_plot([_p("a", 1, 1)], tmp_path / "x.png", title="t")


def test_bad_suffix_and_no_points(tmp_path):
    with pytest.raises(InputError, match="format"):
        pareto_plot([_p("a", 1, 1)], tmp_path / "x.jpg", title="t")
    with pytest.raises(InputError, match="nothing to plot"):
        pareto_plot([], tmp_path / "x.png", title="t")


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_is_written_and_deterministic(tmp_path, suffix):
    pytest.importorskip("matplotlib")
    pts = [_p("1xTP8", 3000, 4.0, 0.30), _p("2xTP4", 4200, 5.5, 0.25, slo=False),
           _p("4xTP2-wfp8", 5000, 9.0, 0.20), _p("8xTP1", 2500, 12.0, 0.35),
           _p("no-energy", 1000, 2.0)]
    a = pareto_plot(pts, tmp_path / f"a{suffix}", title="llama-3.1-70b on 8xH100")
    b = pareto_plot(pts, tmp_path / "sub" / f"b{suffix}", title="llama-3.1-70b on 8xH100")
    assert a == tmp_path / f"a{suffix}"
    data = a.read_bytes()
    assert len(data) > 5000
    assert data == b.read_bytes()
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert b"<svg" in data and b"Date" not in data
