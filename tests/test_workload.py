"""Trace loaders, the Requests container, synthetic workloads and the SLO spec."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex_opt.errors import InputError
from apex_opt.io import validate
from apex_opt.registry import data_dir
from apex_opt.sim.workload import Requests, generate, load_trace, sample_arrivals, sample_lengths
from apex_opt.specs.slo import SLOSpec, load_slo
from apex_opt.specs.workload import (ArrivalSpec, LengthDist, WorkloadSpec, json_schemas,
                                     load_workload)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ------------------------------------------------------------------------------- APEX JSONL

def test_jsonl_round_trip(tmp_path):
    rows = [{"StartTimeOffset": 500_000_000, "RequestID": "a", "ContextTokens": 10,
             "GeneratedTokens": 5, "other": 1},
            {"StartTimeOffset": 1_500_000_000, "RequestID": "b", "ContextTokens": 20,
             "GeneratedTokens": 1},
            {"StartTimeOffset": 1_500_000_000, "RequestID": "c", "ContextTokens": 30.0,
             "GeneratedTokens": 7}]
    r = load_trace(_write(tmp_path, "t.jsonl", _jsonl(rows) + "\n"))
    assert len(r) == 3
    np.testing.assert_allclose(r.arrival_s, [0.5, 1.5, 1.5])  # offsets kept, ns -> s
    assert r.prompt_tokens.tolist() == [10, 20, 30]
    assert r.output_tokens.tolist() == [5, 1, 7]
    assert r.prompt_tokens.dtype == np.int64 and r.arrival_s.dtype == np.float64
    assert r.ids == ["a", "b", "c"]
    assert r.source.endswith("t.jsonl")


def test_jsonl_sniffed_without_suffix(tmp_path):
    p = _write(tmp_path, "trace.txt", _jsonl([{"StartTimeOffset": 0, "ContextTokens": 3,
                                               "GeneratedTokens": 2}]))
    r = load_trace(p)
    assert len(r) == 1 and r.ids is None


_GOOD = {"StartTimeOffset": 0, "ContextTokens": 10, "GeneratedTokens": 5}


@pytest.mark.parametrize("bad, words", [
    ({"StartTimeOffset": -5}, ["line 2", "StartTimeOffset", "-5", "negative"]),
    ({"ContextTokens": -3}, ["line 2", "ContextTokens", "-3", "negative"]),
    ({"GeneratedTokens": 0}, ["line 2", "GeneratedTokens", "0", "output token"]),
    ({"ContextTokens": 0}, ["line 2", "ContextTokens", "prompt token"]),
    ({"GeneratedTokens": 2.5}, ["line 2", "GeneratedTokens", "2.5", "integer"]),
    ({"ContextTokens": "many"}, ["line 2", "ContextTokens", "many"]),
    ({"GeneratedTokens": True}, ["line 2", "GeneratedTokens", "integer"]),
    ({"StartTimeOffset": "soon"}, ["line 2", "StartTimeOffset", "soon"]),
])
def test_jsonl_bad_values(tmp_path, bad, words):
    p = _write(tmp_path, "bad.jsonl", _jsonl([_GOOD, {**_GOOD, **bad}]))
    with pytest.raises(InputError) as ei:
        load_trace(p)
    msg = str(ei.value)
    assert "bad.jsonl" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_jsonl_missing_field(tmp_path):
    row = {"StartTimeOffset": 0, "ContextTokens": 3}
    with pytest.raises(InputError, match=r"line 1.*GeneratedTokens.*missing"):
        load_trace(_write(tmp_path, "m.jsonl", _jsonl([row])))


def test_jsonl_unsorted(tmp_path):
    rows = [{**_GOOD, "StartTimeOffset": 10}, {**_GOOD, "StartTimeOffset": 20},
            {**_GOOD, "StartTimeOffset": 15}]
    with pytest.raises(InputError) as ei:
        load_trace(_write(tmp_path, "u.jsonl", _jsonl(rows)))
    msg = str(ei.value)
    assert "line 3" in msg and "non-decreasing" in msg and "15" in msg and "StartTimeOffset" in msg


def test_jsonl_malformed_line(tmp_path):
    text = _jsonl([_GOOD]) + '{"StartTimeOffset": 1, "ContextTokens": \n'
    with pytest.raises(InputError, match=r"m\.jsonl.*line 2.*malformed JSON"):
        load_trace(_write(tmp_path, "m.jsonl", text))
    with pytest.raises(InputError, match=r"line 1.*expected a JSON object"):
        load_trace(_write(tmp_path, "a.jsonl", "[1, 2]\n"))


@pytest.mark.parametrize("name, text", [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.csv", ""),
                                        ("e.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"),
                                        ("e.txt", "   ")])
def test_empty_traces(tmp_path, name, text):
    with pytest.raises(InputError, match="empty"):
        load_trace(_write(tmp_path, name, text))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_trace(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------- Azure CSV

_AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:50.9951690,879,1
2023-11-17 00:00:01,12,3
"""


def test_azure_csv_datetimes(tmp_path):
    r = load_trace(_write(tmp_path, "az.csv", _AZURE))
    assert len(r) == 4
    assert r.arrival_s[0] == 0.0
    assert r.arrival_s[1] == pytest.approx(50.9951690 - 46.6805900, abs=1e-9)
    assert r.arrival_s[2] == r.arrival_s[1]
    # 18:15:46.68059 -> next day 00:00:01 = 5 h 44 min 14.31941 s
    assert r.arrival_s[3] == pytest.approx(5 * 3600 + 44 * 60 + 14.31941, abs=1e-9)
    assert r.prompt_tokens.tolist() == [374, 396, 879, 12]
    assert r.output_tokens.tolist() == [44, 109, 1, 3]


def test_azure_csv_numeric_seconds_and_extra_columns(tmp_path):
    text = "id,GeneratedTokens,TIMESTAMP,ContextTokens\nx,5,10.5,100\ny,6,11.25,200\n"
    r = load_trace(_write(tmp_path, "n.csv", text))
    np.testing.assert_allclose(r.arrival_s, [0.0, 0.75])
    assert r.prompt_tokens.tolist() == [100, 200] and r.output_tokens.tolist() == [5, 6]


def test_azure_csv_timezone(tmp_path):
    text = ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-01-01T10:00:00Z,1,1\n"
            "2024-01-01T11:00:30+01:00,1,1\n")
    r = load_trace(_write(tmp_path, "tz.csv", text))
    np.testing.assert_allclose(r.arrival_s, [0.0, 30.0])


@pytest.mark.parametrize("body, words", [
    ("2023-11-16 18:15:46.1,10,5\n2023-11-16 18:15:45.0,10,5\n", ["line 3", "TIMESTAMP",
                                                                  "non-decreasing",
                                                                  "2023-11-16 18:15:45.0"]),
    ("2023-11-16 18:15:46.1,10,0\n", ["line 2", "GeneratedTokens", "output token"]),
    ("2023-11-16 18:15:46.1,-1,4\n", ["line 2", "ContextTokens", "negative"]),
    ("2023-11-16 18:15:46.1,10,4.5\n", ["line 2", "GeneratedTokens", "4.5", "integer"]),
    ("yesterday,10,4\n", ["line 2", "TIMESTAMP", "yesterday"]),
    ("2023-11-16 25:15:46.1,10,4\n", ["line 2", "TIMESTAMP"]),
    ("2023-11-16 18:15:46.1,10\n", ["line 2", "columns"]),
    ("5.0,10,4\n2023-11-16 18:15:46.1,10,4\n", ["line 3", "TIMESTAMP", "format"]),
    ("-2,10,4\n", ["line 2", "TIMESTAMP", "negative"]),
])
def test_azure_csv_bad_rows(tmp_path, body, words):
    p = _write(tmp_path, "bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n" + body)
    with pytest.raises(InputError) as ei:
        load_trace(p)
    msg = str(ei.value)
    assert "bad.csv" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_azure_csv_missing_column(tmp_path):
    p = _write(tmp_path, "h.csv", "TIMESTAMP,ContextTokens\n1,2\n")
    with pytest.raises(InputError, match=r"h\.csv.*GeneratedTokens"):
        load_trace(p)


def test_azure_csv_headers_any_case(tmp_path):
    p = _write(tmp_path, "lc.csv", "timestamp,contexttokens,GENERATEDTOKENS,extra\n"
                                     "1.5,10,4,x\n2.0,20,5,y\n")
    r = load_trace(p)
    np.testing.assert_allclose(r.arrival_s, [0.0, 0.5])
    assert r.prompt_tokens.tolist() == [10, 20] and r.output_tokens.tolist() == [4, 5]
    with pytest.raises(InputError, match=r"lacks column.*GeneratedTokens.*any letter case"):
        load_trace(_write(tmp_path, "m.csv", "timestamp,contexttokens\n1,2\n"))


def test_unsorted_csv_sort_flag(tmp_path):
    text = ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:50,1,1\n"
            "2023-11-16 18:15:46,2,2\n2023-11-16 18:15:50,3,3\n")
    p = _write(tmp_path, "u.csv", text)
    with pytest.raises(InputError) as ei:
        load_trace(p)
    msg = str(ei.value)
    assert "line 3" in msg and "TIMESTAMP" in msg and "18:15:46" in msg and "--sort-trace" in msg
    r = load_trace(p, sort=True)
    np.testing.assert_allclose(r.arrival_s, [0.0, 4.0, 4.0])  # relative to the earliest request
    assert r.prompt_tokens.tolist() == [2, 1, 3]  # stable for equal times


def test_unsorted_jsonl_sort_flag_keeps_ids(tmp_path):
    rows = [{**_GOOD, "StartTimeOffset": 20, "RequestID": "b"},
            {**_GOOD, "StartTimeOffset": 10, "RequestID": "a"}]
    p = _write(tmp_path, "u.jsonl", _jsonl(rows))
    with pytest.raises(InputError, match="--sort-trace"):
        load_trace(p)
    r = load_trace(p, sort=True)
    assert r.ids == ["a", "b"] and r.arrival_s.tolist() == [1e-8, 2e-8]


def test_cli_sort_trace(tmp_path):
    from click.testing import CliRunner

    from apex_opt.cli import main

    rows = [{**_GOOD, "StartTimeOffset": 2_000_000}, {**_GOOD, "StartTimeOffset": 1_000_000}]
    p = _write(tmp_path, "u.jsonl", _jsonl(rows))
    args = ["simulate", "--model", "llama-3.2-1b", "--tp", "1", "--max-model-len", "2048",
            "--json", "--trace", str(p)]
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code == 2 and "--sort-trace" in bad.output
    ok = CliRunner().invoke(main, args + ["--sort-trace"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["metrics"]["num_completed"] == 2


# ------------------------------------------------------------------------------- real traces

@pytest.fixture
def traces_dir(shared_dir: Path) -> Path:
    d = shared_dir / "validation" / "apex-h100x8" / "traces"
    if not any(d.glob("*.jsonl")):
        pytest.skip("../shared/validation/apex-h100x8/traces is absent")
    return d


def test_real_apex_traces(traces_dir):
    for f in sorted(traces_dir.glob("*.jsonl")):
        r = load_trace(f)
        lines = [ln for ln in f.read_text().splitlines() if ln.strip()]
        assert len(r) == len(lines), f
        assert np.all(np.diff(r.arrival_s) >= 0), f
        first = json.loads(lines[0])
        assert r.arrival_s[0] == pytest.approx(first["StartTimeOffset"] / 1e9)
        assert r.prompt_tokens[0] == first["ContextTokens"]
        assert r.output_tokens.min() >= 1 and r.prompt_tokens.min() >= 1


@pytest.mark.parametrize("dataset", ["summarization_05", "lmsys_05"])
def test_real_dp_splits_are_round_robin(traces_dir, dataset):
    """The recorded DP runs replayed a round-robin split of the full trace (same request ids,
    arrival times and prompts; output lengths differ per run because requests stop at EOS)."""
    full_p = traces_dir / f"vllm-llama_{dataset}_validation_8TP.jsonl"
    if not full_p.exists():
        pytest.skip("this validation trace is absent")
    full = load_trace(full_p)
    for k, plan in ((2, "2DP4TP"), (4, "4DP2TP")):
        for i, part in enumerate(full.split_round_robin(k)):
            split_p = traces_dir / f"vllm-llama_{dataset}_validation_{plan}_{i}.jsonl"
            if not split_p.exists():
                continue
            split = load_trace(split_p)
            assert split.ids == part.ids
            np.testing.assert_array_equal(split.arrival_s, part.arrival_s)
            np.testing.assert_array_equal(split.prompt_tokens, part.prompt_tokens)


# ------------------------------------------------------------------------------- Requests

def _reqs(n: int = 7) -> Requests:
    return Requests(np.arange(n) * 0.5 + 2.0, np.arange(1, n + 1) * 10, np.arange(1, n + 1),
                    [f"r{i}" for i in range(n)], "test")


def test_split_round_robin_partitions():
    r = _reqs(7)
    parts = r.split_round_robin(3)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert parts[1].ids == ["r1", "r4"]
    merged = sorted(i for p in parts for i in p.ids)
    assert merged == sorted(r.ids)
    with pytest.raises(ValueError):
        r.split_round_robin(0)


def test_subset_keeps_order_and_masks():
    r = _reqs(5)
    s = r.subset([3, 1])
    assert s.ids == ["r1", "r3"] and np.all(np.diff(s.arrival_s) >= 0)
    m = r.subset(r.output_tokens > 3)
    assert m.ids == ["r3", "r4"]
    with pytest.raises(IndexError):
        r.subset([5])


def test_scaled_rate_compresses_gaps():
    r = _reqs(5)
    f = r.scaled_rate(2.0)
    assert f.arrival_s[0] == r.arrival_s[0]
    np.testing.assert_allclose(np.diff(f.arrival_s), np.diff(r.arrival_s) / 2)
    assert f.prompt_tokens is r.prompt_tokens or np.array_equal(f.prompt_tokens, r.prompt_tokens)
    with pytest.raises(ValueError):
        r.scaled_rate(0)


def test_requests_invariants():
    with pytest.raises(ValueError, match="sorted"):
        Requests(np.array([1.0, 0.5]), np.array([1, 1]), np.array([1, 1]))
    with pytest.raises(ValueError, match="output token"):
        Requests(np.array([0.0]), np.array([1]), np.array([0]))
    with pytest.raises(ValueError, match="equal length"):
        Requests(np.array([0.0, 1.0]), np.array([1]), np.array([1, 1]))
    r = _reqs(3)
    with pytest.raises(ValueError):
        r.arrival_s[0] = 5.0  # read-only views


def test_summary():
    s = _reqs(5).summary()
    assert s.num_requests == 5 and s.duration_s == 2.0 and s.rate_req_s == 2.0
    assert s.prompt_tokens.mean == 30.0 and s.output_tokens.max == 5.0
    assert s.total_prompt_tokens == 150 and s.total_output_tokens == 15 and s.max_seq_len == 55


# ------------------------------------------------------------------------------- synthetic

def _spec(**over) -> WorkloadSpec:
    base = {"num_requests": 1000, "arrival": {"process": "poisson", "rate": 4.0},
            "prompt_len": {"dist": "lognormal", "mean": 1000, "cv": 0.8, "min": 16, "max": 8192},
            "output_len": {"dist": "lognormal", "median": 200, "sigma": 0.7, "max": 2048},
            "seed": 3}
    base.update(over)
    return WorkloadSpec.model_validate(base)


def test_generate_deterministic():
    a, b = generate(_spec()), generate(_spec())
    for x, y in ((a.arrival_s, b.arrival_s), (a.prompt_tokens, b.prompt_tokens),
                 (a.output_tokens, b.output_tokens)):
        np.testing.assert_array_equal(x, y)
    c = generate(_spec(seed=4))
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    d = generate(_spec(), np.random.default_rng(99))
    e = generate(_spec(), np.random.default_rng(99))
    np.testing.assert_array_equal(d.prompt_tokens, e.prompt_tokens)


def test_streams_are_independent():
    """Changing the output distribution leaves arrivals and prompts unchanged."""
    a = generate(_spec())
    b = generate(_spec(output_len=64))
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert np.all(b.output_tokens == 64)


@pytest.mark.parametrize("arrival", [{"process": "poisson", "rate": 2.5},
                                     {"process": "gamma", "rate": 2.5, "cv": 3.0},
                                     {"process": "gamma", "rate": 2.5, "cv": 0.3},
                                     {"process": "constant", "rate": 2.5}])
def test_rate_and_burstiness(arrival):
    n = 100_000
    r = generate(_spec(num_requests=n, arrival=arrival))
    gaps = np.diff(r.arrival_s)
    assert r.arrival_s[0] == 0.0
    assert (n - 1) / r.duration_s == pytest.approx(2.5, rel=0.03)
    cv = gaps.std() / gaps.mean()
    want = {"poisson": 1.0, "constant": 0.0}.get(arrival["process"], arrival.get("cv"))
    assert cv == pytest.approx(want, abs=0.05 * max(want, 1.0))


def test_lognormal_mean_and_median():
    r = generate(_spec(num_requests=200_000, prompt_len={"dist": "lognormal", "mean": 1000,
                                                         "cv": 0.5}))
    assert r.prompt_tokens.mean() == pytest.approx(1000, rel=0.01)
    assert r.prompt_tokens.std() / r.prompt_tokens.mean() == pytest.approx(0.5, rel=0.03)
    assert np.median(r.output_tokens) == pytest.approx(200, rel=0.02)


@settings(max_examples=40, deadline=None)
@given(lo=st.integers(1, 5000), width=st.integers(0, 5000),
       dist=st.sampled_from(["uniform", "lognormal", "normal", "zipf", "fixed"]),
       seed=st.integers(0, 2 ** 32))
def test_lengths_within_bounds(lo, width, dist, seed):
    hi = lo + width
    mid = (lo + hi) // 2
    params = {"uniform": {}, "lognormal": {"mean": max(mid, 1), "cv": 1.5},
              "normal": {"mean": mid, "sigma": width + 1.0}, "zipf": {"alpha": 1.2},
              "fixed": {"mean": mid}}[dist]
    d = LengthDist.model_validate({"dist": dist, "min": lo, "max": hi, **params})
    x = sample_lengths(d, 2000, np.random.default_rng(seed))
    assert x.dtype == np.int64 and x.shape == (2000,)
    assert x.min() >= lo and x.max() <= hi
    if dist == "fixed":
        assert np.all(x == mid)


def test_uniform_covers_both_ends_and_zipf_is_skewed():
    rng = np.random.default_rng(0)
    u = sample_lengths(LengthDist(dist="uniform", min=5, max=9), 10_000, rng)
    assert set(np.unique(u).tolist()) == {5, 6, 7, 8, 9}
    z = sample_lengths(LengthDist(dist="zipf", alpha=1.5, min=1, max=1000), 50_000, rng)
    # P(1) = 1 / sum_{k<=1000} k^-1.5 ~ 0.383
    p1 = 1 / np.sum(np.arange(1, 1001, dtype=float) ** -1.5)
    assert np.mean(z == 1) == pytest.approx(p1, abs=0.01)


def test_generate_100k_is_fast():
    import time
    spec = _spec(num_requests=100_000)
    t = time.perf_counter()
    r = generate(spec)
    assert len(r) == 100_000
    assert time.perf_counter() - t < 0.5  # typically a few ms


def _prefix_spec(**prefix) -> WorkloadSpec:
    return validate(WorkloadSpec, {"num_requests": 400, "arrival": {"rate": 5},
                                   "prompt_len": {"dist": "uniform", "min": 200, "max": 900},
                                   "output_len": 20, "prefix": prefix}, "w.yaml")


def test_shared_prefix_groups():
    spec = _prefix_spec(groups=10, shared_tokens=150)
    r = generate(spec)
    assert r.prefix_block_tokens == 16 and len(r.prefix_blocks) == 400
    # 150 shared tokens -> 9 whole 16-token blocks (144 tokens) per request, ids of its group
    assert {len(b) for b in r.prefix_blocks} == {9}
    groups = {b for b in r.prefix_blocks}
    assert len(groups) == 10
    assert all(b == tuple(range(b[0], b[0] + 9)) and b[0] % 9 == 0 for b in groups)
    # every request but the first of each group could reuse its 144 shared tokens
    assert r.prefix_reuse_tokens() == (400 - 10) * 144
    # the lengths and arrivals do not depend on the prefix (independent generator)
    plain = generate(spec.model_copy(update={"prefix": None}))
    np.testing.assert_array_equal(plain.prompt_tokens, r.prompt_tokens)
    np.testing.assert_array_equal(plain.arrival_s, r.arrival_s)
    assert plain.prefix_blocks is None
    # deterministic
    assert generate(spec).prefix_blocks == r.prefix_blocks


def test_shared_prefix_exact_tokens_short_prompts_and_round_robin():
    r = generate(_prefix_spec(groups=3, shared_tokens=150, block_tokens=1,
                              assignment="round_robin"))
    assert [b[0] // 150 for b in r.prefix_blocks[:6]] == [0, 1, 2, 0, 1, 2]
    assert {len(b) for b in r.prefix_blocks} == {150}
    # prompts shorter than the shared part share what they have
    spec = validate(WorkloadSpec, {"num_requests": 4, "arrival": {"rate": 1}, "prompt_len": 40,
                                   "output_len": 2, "prefix": {"groups": 1,
                                                               "shared_tokens": 100}}, "w")
    assert generate(spec).prefix_blocks == [(0, 1)] * 4  # 40 tokens -> 2 whole 16-token blocks


@pytest.mark.parametrize("prefix, field", [({"groups": 0, "shared_tokens": 10}, "groups"),
                                           ({"groups": 2}, "shared_tokens"),
                                           ({"groups": 2, "shared_tokens": 10,
                                             "block_tokens": 0}, "block_tokens"),
                                           ({"groups": 2, "shared_tokens": 10,
                                             "assignment": "hash"}, "assignment"),
                                           ({"groups": 2, "shared_tokens": 10, "x": 1}, "x")])
def test_prefix_spec_errors(prefix, field):
    with pytest.raises(InputError, match=rf"prefix\.{field}"):
        _prefix_spec(**prefix)


def test_sample_arrivals_single_request():
    a = sample_arrivals(ArrivalSpec(rate=1.0), 1, np.random.default_rng(0))
    assert a.tolist() == [0.0]


@pytest.mark.parametrize("over, field", [
    ({"arrival": {"rate": 0}}, "arrival.rate"),
    ({"arrival": {"rate": -1}}, "arrival.rate"),
    ({"arrival": {"rate": float("nan")}}, "arrival.rate"),
    ({"arrival": {"rate": 1, "process": "gamma"}}, "arrival"),
    ({"arrival": {"rate": 1, "cv": 2.0}}, "arrival"),
    ({"arrival": {"rate": 1, "process": "weibull"}}, "arrival.process"),
    ({"num_requests": 0}, "num_requests"),
    ({"num_requests": 10_000_001}, "num_requests"),
    ({"prompt_len": 0}, "prompt_len"),
    ({"prompt_len": 2.5}, "prompt_len"),
    ({"prompt_len": {"dist": "uniform", "min": 10, "max": 5}}, "prompt_len"),
    ({"prompt_len": {"dist": "uniform", "min": 10}}, "prompt_len"),
    ({"prompt_len": {"dist": "lognormal", "mean": 100}}, "prompt_len"),
    ({"prompt_len": {"dist": "lognormal", "mean": 100, "median": 90, "cv": 1}}, "prompt_len"),
    ({"prompt_len": {"dist": "normal", "mean": 100, "sigma": 10, "alpha": 1}}, "prompt_len"),
    ({"prompt_len": {"dist": "lognormal", "mean": 100, "cv": 1, "max": 50}}, "prompt_len"),
    ({"prompt_len": {"dist": "normal", "mean": float("nan"), "sigma": 1}}, "prompt_len.mean"),
    ({"prompt_len": {"dist": "fixed", "mean": 10, "sigmaa": 1}}, "prompt_len.sigmaa"),
    ({"output_len": {"dist": "fixed", "mean": 0}}, "output_len.mean"),
    ({"seed": -1}, "seed"),
    ({"extra": 1}, "extra"),
])
def test_workload_spec_errors(over, field):
    base = {"num_requests": 10, "arrival": {"rate": 1.0}, "prompt_len": 100, "output_len": 10}
    base.update(over)
    with pytest.raises(InputError) as ei:
        validate(WorkloadSpec, base, "w.yaml")
    assert f"field '{field}'" in str(ei.value) and "w.yaml" in str(ei.value)


def test_load_workload_file_and_errors(tmp_path):
    p = _write(tmp_path, "w.yaml", "num_requests: 20\narrival: {process: constant, rate: 2}\n"
                                   "prompt_len: 128\noutput_len: {dist: uniform, min: 1, max: 9}\n")
    spec = load_workload(p)
    r = generate(spec)
    np.testing.assert_allclose(np.diff(r.arrival_s), 0.5)
    assert np.all(r.prompt_tokens == 128)
    bad = _write(tmp_path, "b.yaml", "num_requests: 20\narrival: {rate: 2}\nprompt_len: 128\n")
    with pytest.raises(InputError, match=r"b\.yaml.*output_len.*missing"):
        load_workload(bad)
    with pytest.raises(InputError, match="not found"):
        load_workload(tmp_path / "none.yaml")


def test_bundled_examples():
    w = load_workload(Path(str(data_dir("examples") / "default-workload.yaml")))
    s = load_slo(Path(str(data_dir("examples") / "default-slo.yaml")))
    r = generate(w)
    assert len(r) == w.num_requests == 500
    assert 2.0 <= w.arrival.rate <= 4.0
    assert 700 < r.prompt_tokens.mean() < 1300 and 180 < r.output_tokens.mean() < 320
    assert s.ttft_ms.target == 2000 and s.tpot_ms.target == 60 and s.attainment == 0.9


def test_json_schemas():
    sch = json_schemas()
    assert set(sch) == {"workload", "slo"}
    assert "num_requests" in sch["workload"]["properties"]
    assert "ttft_ms" in sch["slo"]["properties"]
    json.dumps(sch)  # serialisable
    # the short integer form of a length is documented in the schema
    assert {"type": "integer"} in sch["workload"]["properties"]["prompt_len"]["anyOf"]


# ------------------------------------------------------------------------------- SLO

def test_slo_forms(tmp_path):
    p = _write(tmp_path, "s.yaml", "ttft_ms: 500\ntpot_ms: {target: 50, percentile: 99}\n"
                                   "objective: energy\nconstraints: {max_gpus: 8, "
                                   "weight_dtypes: [bf16, fp8], max_tp: 4}\n")
    s = load_slo(p)
    assert s.ttft_ms.target == 500 and s.ttft_ms.percentile == 90
    assert s.tpot_ms.percentile == 99 and s.e2e_s is None
    assert s.attainment == 0.9 and s.objective == "energy"
    assert s.constraints.max_gpus == 8 and s.constraints.weight_dtypes == ["bf16", "fp8"]
    assert list(s.targets()) == ["ttft_ms", "tpot_ms"]
    assert not SLOSpec().has_targets
    # round trip through the dump
    assert SLOSpec.model_validate(s.model_dump()) == s


@pytest.mark.parametrize("data, field", [
    ({"ttft_ms": 0}, "ttft_ms.target"),
    ({"ttft_ms": -1}, "ttft_ms.target"),
    ({"ttft_ms": True}, "ttft_ms"),
    ({"tpot_ms": {"target": 50, "percentile": 0}}, "tpot_ms.percentile"),
    ({"tpot_ms": {"target": 50, "percentile": 101}}, "tpot_ms.percentile"),
    ({"e2e_s": {"target": 5, "pct": 90}}, "e2e_s.pct"),
    ({"attainment": 0}, "attainment"),
    ({"attainment": 1.5}, "attainment"),
    ({"attainment": float("nan")}, "attainment"),
    ({"objective": "fastest"}, "objective"),
    ({"constraints": {"weight_dtypes": ["fp16"]}}, "constraints.weight_dtypes[0]"),
    ({"constraints": {"kv_dtypes": ["int4"]}}, "constraints.kv_dtypes[0]"),
    ({"constraints": {"kv_dtypes": []}}, "constraints.kv_dtypes"),
    ({"constraints": {"pools": ["a", "a"]}}, "constraints.pools"),
    ({"constraints": {"max_gpus": 0}}, "constraints.max_gpus"),
    ({"constraints": {"power_budget_w": -5}}, "constraints.power_budget_w"),
    ({"constraints": {"max_ep": 2}}, "constraints.max_ep"),
    ({"ttft": 100}, "ttft"),
])
def test_slo_errors(data, field):
    with pytest.raises(InputError) as ei:
        validate(SLOSpec, data, "s.yaml")
    assert f"field '{field}'" in str(ei.value) and "s.yaml" in str(ei.value)


def test_slo_empty_file(tmp_path):
    with pytest.raises(InputError, match="empty"):
        load_slo(_write(tmp_path, "e.yaml", ""))
    assert math.isclose(load_slo(_write(tmp_path, "ok.yaml", "e2e_s: 1.5\n")).e2e_s.target, 1.5)


# ------------------------------------------------------------------------------- prefix caching

def _prefix_run(prefix_caching: bool | None, req):
    from apex_opt.registry import load_cluster
    from apex_opt.sim.simulator import simulate
    from apex_opt.specs.model import load_model
    from apex_opt.specs.plan import Plan, ReplicaGroup

    g = {"tp": 1, "max_model_len": 8192}
    if prefix_caching is not None:
        g["prefix_caching"] = prefix_caching
    return simulate(load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8"),
                    Plan(groups=(ReplicaGroup(**g),)), req)


def test_shared_prefix_lowers_ttft_and_kv_use():
    """16 clients whose prompts start with one of 2 shared 2,000-token system prompts: with prefix
    caching the shared part is prefilled once per group and its KV blocks are held once."""
    spec = validate(WorkloadSpec, {
        "num_requests": 96, "arrival": {"process": "closed_loop", "concurrency": 16},
        "prompt_len": {"dist": "uniform", "min": 2200, "max": 2600}, "output_len": 48,
        "prefix": {"groups": 2, "shared_tokens": 2000}}, "w.yaml")
    req = generate(spec)
    off, on = _prefix_run(False, req), _prefix_run(True, req)
    assert on.metrics.num_completed == off.metrics.num_completed == 96
    assert on.metrics.ttft_ms.mean < 0.7 * off.metrics.ttft_ms.mean
    assert on.replicas[0].max_kv_blocks_used < 0.8 * off.replicas[0].max_kv_blocks_used
    # nothing shared -> the cache changes nothing
    plain = generate(spec.model_copy(update={"prefix": None}))
    a, b = _prefix_run(False, plain), _prefix_run(True, plain)
    assert a.metrics.ttft_ms.mean == pytest.approx(b.metrics.ttft_ms.mean, rel=1e-9)


def test_cli_prefix_caching_flag(tmp_path):
    from click.testing import CliRunner

    from apex_opt.cli import main

    w = _write(tmp_path, "w.yaml", "num_requests: 32\narrival: {process: closed_loop, "
                                   "concurrency: 8}\nprompt_len: 1500\noutput_len: 16\n"
                                   "prefix: {groups: 1, shared_tokens: 1400}\n")
    base = ["simulate", "--model", "llama-3.1-8b", "--tp", "1", "--max-model-len", "4096",
            "--json", "--workload", str(w)]
    out = {}
    for flag in ("--prefix-caching", "--no-prefix-caching"):
        r = CliRunner().invoke(main, base + [flag])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        assert doc["plan"]["groups"][0]["prefix_caching"] is (flag == "--prefix-caching")
        out[flag] = doc["metrics"]["ttft_ms"]["mean"]
    assert out["--prefix-caching"] < out["--no-prefix-caching"]
