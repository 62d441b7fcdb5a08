"""Uneven layer-to-stage splits: exact against brute force, valid shapes."""

from __future__ import annotations

import itertools

import pytest

from apex_opt.solver.stages import split_layers, stage_work
from apex_opt.specs.model import load_model


@pytest.mark.parametrize("name", ["llama-3.1-70b", "kimi-k2", "llama-3.1-8b"])
@pytest.mark.parametrize("pp", [1, 2, 3, 5, 8])
def test_split_covers_all_layers(name: str, pp: int) -> None:
    m = load_model(name)
    s = split_layers(m, pp)
    assert len(s) == pp and sum(s) == m.num_layers and min(s) >= 1


def _brute_best(m, pp: int) -> float:
    n = m.num_layers
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), pp - 1):
        sizes = [b - a for a, b in zip((0,) + cuts, cuts + (n,))]
        best = min(best, max(stage_work(m, tuple(sizes))))
    return best


@pytest.mark.parametrize("pp", [2, 3, 4])
def test_split_minimises_slowest_stage(pp: int) -> None:
    m = load_model("llama-3.2-1b")
    s = split_layers(m, pp)
    assert max(stage_work(m, s)) == pytest.approx(_brute_best(m, pp), rel=1e-9)


def test_lm_head_stage_gets_fewer_layers() -> None:
    m = load_model("llama-3.1-70b")
    s = split_layers(m, 2)
    assert s[-1] < s[0]  # the last stage also reads the LM head


def test_split_rejects_too_many_stages() -> None:
    m = load_model("llama-3.2-1b")
    with pytest.raises(ValueError):
        split_layers(m, m.num_layers + 1)
