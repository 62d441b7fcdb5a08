"""Mooncake-format JSONL traces (timestamp ms, input_length, output_length, hash_ids of 512-token
prefix blocks): parsing, errors, sorting, prefix reuse, and the public traces in ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apex_opt.errors import InputError
from apex_opt.sim.workload import MOONCAKE_BLOCK_TOKENS, Requests, load_trace


def _write(tmp_path: Path, name: str, rows: list) -> Path:
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                 encoding="utf-8")
    return p


_ROWS = [
    {"timestamp": 0, "input_length": 1100, "output_length": 50, "hash_ids": [0, 1, 2]},
    {"timestamp": 250, "input_length": 600, "output_length": 10, "hash_ids": [0, 3]},
    {"timestamp": 250.5, "input_length": 1024, "output_length": 7, "hash_ids": [0, 1]},
]


def test_parse_round_trip(tmp_path):
    r = load_trace(_write(tmp_path, "m.jsonl", _ROWS))
    assert len(r) == 3 and r.ids is None
    np.testing.assert_allclose(r.arrival_s, [0.0, 0.25, 0.2505])  # ms -> s, offsets kept
    assert r.prompt_tokens.tolist() == [1100, 600, 1024]
    assert r.output_tokens.tolist() == [50, 10, 7]
    assert r.prefix_blocks == [(0, 1, 2), (0, 3), (0, 1)]
    assert r.prefix_block_tokens == MOONCAKE_BLOCK_TOKENS == 512
    assert r.concurrency is None
    # request 1 reuses block 0 (512 tokens); request 2 reuses blocks 0 and 1 (1024 tokens)
    assert r.prefix_reuse_tokens() == 512 + 1024
    s = r.summary()
    assert s.prefix_block_tokens == 512 and s.prefix_reuse_tokens == 1536


def test_detected_without_suffix_and_without_hash_ids(tmp_path):
    p = _write(tmp_path, "trace.txt", [{"timestamp": 5, "input_length": 10, "output_length": 2}])
    r = load_trace(p)
    assert r.prefix_blocks is None and r.arrival_s.tolist() == [0.005]
    assert r.summary().prefix_reuse_tokens is None
    # lines without hash_ids in a trace that has them: nothing known to be shared
    p2 = _write(tmp_path, "mixed.jsonl", [_ROWS[0], {"timestamp": 1, "input_length": 700,
                                                     "output_length": 3}])
    assert load_trace(p2).prefix_blocks == [(0, 1, 2), ()]


@pytest.mark.parametrize("bad, words", [
    ({"timestamp": -1}, ["line 2", "timestamp", "-1", "negative"]),
    ({"timestamp": "soon"}, ["line 2", "timestamp", "soon", "milliseconds"]),
    ({"input_length": 0}, ["line 2", "input_length", "prompt token"]),
    ({"output_length": 0}, ["line 2", "output_length", "0", "output token"]),
    ({"output_length": 2.5}, ["line 2", "output_length", "2.5", "integer"]),
    ({"hash_ids": "0,1"}, ["line 2", "hash_ids", "0,1", "list"]),
    ({"hash_ids": [0, "x"]}, ["line 2", "hash_ids", "x", "integer"]),
    ({"hash_ids": [0, 1, 2, 3]}, ["line 2", "hash_ids", "4 hash_ids", "1100-token"]),
])
def test_bad_values_name_file_line_field_value(tmp_path, bad, words):
    p = _write(tmp_path, "bad.jsonl", [_ROWS[0], {**_ROWS[0], **bad}])
    with pytest.raises(InputError) as ei:
        load_trace(p)
    msg = str(ei.value)
    assert "bad.jsonl" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_field_and_malformed_line(tmp_path):
    row = dict(_ROWS[0])
    del row["output_length"]
    with pytest.raises(InputError, match=r"m\.jsonl, line 2.*output_length"):
        load_trace(_write(tmp_path, "m.jsonl", [_ROWS[0], row]))
    with pytest.raises(InputError, match=r"line 3.*malformed JSON"):
        load_trace(_write(tmp_path, "j.jsonl", [_ROWS[0], _ROWS[1], '{"timestamp": 3,']))


def test_unknown_jsonl_format(tmp_path):
    with pytest.raises(InputError, match=r"unknown JSONL trace format.*timestamp"):
        load_trace(_write(tmp_path, "u.jsonl", [{"time": 0, "prompt": 3}]))


def test_unsorted_needs_sort_flag(tmp_path):
    rows = [_ROWS[0], {**_ROWS[1], "timestamp": 900}, {**_ROWS[2], "timestamp": 100},
            {"timestamp": 100, "input_length": 5, "output_length": 5}]
    p = _write(tmp_path, "u.jsonl", rows)
    with pytest.raises(InputError) as ei:
        load_trace(p)
    msg = str(ei.value)
    assert "line 3" in msg and "timestamp" in msg and "100" in msg and "--sort-trace" in msg
    r = load_trace(p, sort=True)
    np.testing.assert_allclose(r.arrival_s, [0.0, 0.1, 0.1, 0.9])
    # stable: the two requests at 100 ms keep their file order; blocks travel with them
    assert r.prompt_tokens.tolist() == [1100, 1024, 5, 600]
    assert r.prefix_blocks == [(0, 1, 2), (0, 1), (), (0, 3)]


def test_prefix_blocks_carried_by_subset_split_and_rate(tmp_path):
    r = load_trace(_write(tmp_path, "m.jsonl", _ROWS))
    assert r.subset([2, 0]).prefix_blocks == [(0, 1, 2), (0, 1)]
    parts = r.split_round_robin(2)
    assert parts[0].prefix_blocks == [(0, 1, 2), (0, 1)] and parts[1].prefix_blocks == [(0, 3)]
    f = r.scaled_rate(2.0)
    assert f.prefix_blocks == r.prefix_blocks and f.prefix_block_tokens == 512
    np.testing.assert_allclose(f.arrival_s, r.arrival_s / 2)


def test_requests_rejects_inconsistent_prefix_blocks():
    with pytest.raises(ValueError, match="prefix_blocks has 1 entries for 2"):
        Requests(np.zeros(2), np.array([10, 10]), np.array([1, 1]), prefix_blocks=[(1,)])
    with pytest.raises(ValueError, match="3 prefix blocks of 512 tokens for a 600-token"):
        Requests(np.zeros(1), np.array([600]), np.array([1]), prefix_blocks=[(1, 2, 3)])
    with pytest.raises(ValueError, match="prefix_block_tokens"):
        Requests(np.zeros(1), np.array([6]), np.array([1]), prefix_blocks=[()],
                 prefix_block_tokens=0)


@pytest.mark.parametrize("name, n, mean_in", [("conversation_trace.jsonl", 12_031, 12_035),
                                              ("synthetic_trace.jsonl", 3_993, 15_325)])
def test_public_mooncake_traces(shared_dir, name, n, mean_in):
    p = shared_dir / "traces" / "mooncake" / name
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    r = load_trace(p)
    assert len(r) == n
    assert r.prompt_tokens.mean() == pytest.approx(mean_in, rel=0.01)
    assert r.prefix_blocks is not None and r.prefix_block_tokens == 512
    assert all(len(b) == -(-p_ // 512) for b, p_ in zip(r.prefix_blocks, r.prompt_tokens))
    reuse = r.prefix_reuse_tokens()
    assert 0 < reuse < int(r.prompt_tokens.sum())


def test_validation_traces_repeat_prompts(shared_dir):
    d = shared_dir / "validation" / "modern" / "traces"
    files = sorted(d.glob("*codegen-stage0.jsonl")) if d.is_dir() else []
    if not files:
        pytest.skip("../shared/validation/modern/traces is absent")
    r = load_trace(files[0])
    # 100 distinct prompts cycled: all but the first use of each are (almost) full cache hits
    distinct = len(set(r.prefix_blocks))
    assert distinct <= 100
    assert r.prefix_reuse_tokens() > 0.9 * int(r.prompt_tokens[100:].sum())


def test_mooncake_prefix_reuse_simulated(tmp_path):
    """A Mooncake trace whose requests repeat a 3-block (1,536-token) prefix: replayed with prefix
    caching on, the repeats prefill only their own tail -> lower TTFT; without hash_ids (nothing
    known to be shared) the cache finds nothing."""
    from apex_opt.registry import load_cluster
    from apex_opt.sim.simulator import simulate
    from apex_opt.specs.model import load_model
    from apex_opt.specs.plan import Plan, ReplicaGroup

    rows = [{"timestamp": 100 * i, "input_length": 1800, "output_length": 20,
             "hash_ids": [0, 1, 2, 1000 + i]} for i in range(40)]
    with_ids = load_trace(_write(tmp_path, "m.jsonl", rows))
    no_ids = load_trace(_write(tmp_path, "n.jsonl", [{k: v for k, v in r.items()
                                                      if k != "hash_ids"} for r in rows]))
    model, cluster = load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8")

    def ttft(req, on: bool) -> float:
        plan = Plan(groups=(ReplicaGroup(tp=1, max_model_len=4096, prefix_caching=on),))
        return simulate(model, cluster, plan, req).metrics.ttft_ms.mean

    assert ttft(with_ids, True) < 0.75 * ttft(with_ids, False)
    assert ttft(no_ids, True) == pytest.approx(ttft(no_ids, False), rel=1e-9)
