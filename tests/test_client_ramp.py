"""Closed loops whose clients start staggered (``--client-ramp`` / workload ``ramp_s``): client i
sends its first request at i x ramp / N instead of all N at t = 0."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt.cli import main as cli
from apex_opt.io import validate
from apex_opt.registry import load_cluster
from apex_opt.sim.simulator import simulate
from apex_opt.sim.workload import Requests, generate
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup
from apex_opt.specs.workload import WorkloadSpec

MODEL = "llama-3.1-8b"


def _run(req: Requests, replicas: int = 1):
    plan = Plan(groups=(ReplicaGroup(tp=1, replicas=replicas, max_model_len=8192),))
    return simulate(load_model(MODEL), load_cluster("h100-sxm-1x8"), plan, req)


def _fixed(n: int, conc: int, ramp: float = 0.0, prompt: int = 1024, out: int = 64) -> Requests:
    return Requests(np.zeros(n), np.full(n, prompt), np.full(n, out), concurrency=conc,
                    client_ramp_s=ramp)


def test_zero_ramp_is_the_plain_closed_loop():
    a = _run(_fixed(64, 8)).per_request()
    b = _run(_fixed(64, 8, ramp=0.0)).per_request()
    for k in ("arrival_s", "first_token_s", "finish_s"):
        assert np.array_equal(a[k], b[k])


@pytest.mark.parametrize("replicas", [1, 2])
def test_first_requests_are_staggered_and_never_more_than_n_in_flight(replicas):
    n, conc, ramp = 96, 8, 0.04
    res = _run(_fixed(n, conc, ramp), replicas)
    pr = res.per_request()
    arr, fin = pr["arrival_s"], pr["finish_s"]
    # the ramp ends before any request finishes, so request i is client i's first: sent at
    # i x ramp / N
    assert fin.min() > ramp
    assert np.allclose(arr[:conc], np.arange(conc) * ramp / conc)
    ev = sorted([(t, 1) for t in arr] + [(t, -1) for t in fin])
    cur = peak = 0
    for _, d in ev:
        cur += d
        peak = max(peak, cur)
    assert peak <= conc
    assert np.all(pr["dropped"] == 0)


def test_staggered_clients_do_not_queue_behind_each_others_prefills():
    # identical requests sent all at once prefill in the same steps (each waits for the whole
    # wave); staggered over about one request's latency they arrive one by one
    lock = _run(_fixed(64, 16)).per_request()
    e2e = float(np.mean(lock["finish_s"] - lock["arrival_s"]))
    spread = _run(_fixed(64, 16, ramp=e2e)).per_request()
    ttft = {k: float(np.mean(p["first_token_s"] - p["arrival_s"]))
            for k, p in (("lock", lock), ("spread", spread))}
    assert ttft["spread"] < 0.6 * ttft["lock"]


def test_workload_yaml_ramp_and_its_refusals():
    spec = validate(WorkloadSpec, {"num_requests": 20, "prompt_len": 100, "output_len": 10,
                                   "arrival": {"process": "closed_loop", "concurrency": 4,
                                               "ramp_s": 1.5}}, "<test>")
    req = generate(spec)
    assert req.client_ramp_s == 1.5 and req.summary().client_ramp_s == 1.5
    assert req.with_concurrency(4).client_ramp_s == 1.5  # kept unless given
    assert req.with_concurrency(None).client_ramp_s == 0.0  # an open loop has no ramp
    from apex_opt.errors import InputError
    with pytest.raises(InputError, match="ramp_s"):
        validate(WorkloadSpec, {"num_requests": 20, "prompt_len": 100, "output_len": 10,
                                "arrival": {"process": "poisson", "rate": 2, "ramp_s": 1.0}},
                 "<test>")
    with pytest.raises(InputError, match="ramp_s"):
        validate(WorkloadSpec, {"num_requests": 20, "prompt_len": 100, "output_len": 10,
                                "arrival": {"process": "closed_loop", "concurrency": 4,
                                            "ramp_s": -1}}, "<test>")
    with pytest.raises(ValueError, match="client_ramp_s"):
        Requests(np.zeros(2), np.ones(2), np.ones(2), concurrency=2, client_ramp_s=float("nan"))


def test_cli_client_ramp():
    r = CliRunner()
    base = ["simulate", "--model", MODEL, "--tp", "1", "--num-requests", "24", "--prompt-len",
            "512", "--output-len", "16"]
    ok = r.invoke(cli, base + ["--concurrency", "4", "--client-ramp", "0.4", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"client_ramp_s": 0.4' in ok.output
    bad = r.invoke(cli, base + ["--rate", "2", "--client-ramp", "1"])
    assert bad.exit_code == 2
    assert "--client-ramp only applies to a closed loop" in bad.output
    assert "Traceback" not in bad.output


def test_validate_modern_ttft_bracket_counts():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "validate_modern.py"
    spec = importlib.util.spec_from_file_location("validate_modern", path)
    vm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vm)

    def row(meas, lock, stag, group="g", clients=8):
        return {"group": group, "meas": {"ttft_ms": meas}, "pred": {"ttft_ms": lock},
                "ttft_staggered_ms": stag, "clients": clients, "prompt_tokens": 1024}
    got = vm.ttft_bracket([row(100, 300, 50), row(40, 300, 50), row(400, 300, 50, clients=16),
                           row(100, 300, 50, "h") | {"ttft_staggered_ms": None},
                           row(100, 102, 99, "k")])
    # position = (measured - staggered) / (lockstep - staggered), median per client count:
    # c8 -> median of 0.2 and -0.04; c16 -> 1.4 (above lockstep). Group k's two replays differ
    # by under 5 % of the measurement, so it has no position.
    assert got["g"] == {"rows": 3, "below": 1, "inside": 1, "above": 1,
                        "mape_lockstep": pytest.approx((200 + 650 + 25) / 3, abs=0.01),
                        "mape_staggered": pytest.approx((50 + 25 + 87.5) / 3, abs=0.01),
                        "position_by_clients": {"1024/c8": [0.08, 2], "1024/c16": [1.4, 1]}}
    assert "h" not in got and got["k"]["position_by_clients"] == {}


def test_solve_refuses_a_ramp_without_a_closed_loop():
    res = CliRunner().invoke(cli, ["solve", "--model", MODEL, "--client-ramp", "2"])
    assert res.exit_code == 2
    assert "--client-ramp" in res.output and "closed loop" in res.output
    assert "Traceback" not in res.output


def test_compare_staggered_replays_a_lockstep_closed_loop_out_of_step():
    plan = Plan(groups=(ReplicaGroup(tp=1, max_model_len=8192),))
    model, cluster = load_model(MODEL), load_cluster("h100-sxm-1x8")
    req = _fixed(64, 16)
    res = simulate(model, cluster, plan, req, compare_staggered=True)
    st = res.staggered_clients
    plain = _run(req)
    # the lockstep figures are the plain run's; the companion is the run with the clients'
    # first requests spread over its mean E2E
    assert res.metrics == plain.metrics and plain.staggered_clients is None
    assert st.client_ramp_s == pytest.approx(res.metrics.e2e_s.mean, rel=1e-5)
    spread = _run(_fixed(64, 16, ramp=st.client_ramp_s)).metrics
    assert (st.ttft_ms, st.tpot_ms, st.e2e_s) == (spread.ttft_ms, spread.tpot_ms, spread.e2e_s)
    assert st.ttft_ms.mean < 0.6 * res.metrics.ttft_ms.mean
    # nothing to compare: an open loop, a closed loop already staggered, a single client
    for other in (Requests(np.arange(16) * 0.1, np.full(16, 1024), np.full(16, 64)),
                  _fixed(64, 16, ramp=0.5), _fixed(16, 1)):
        assert simulate(model, cluster, plan, other, compare_staggered=True).staggered_clients is None


def test_cli_shows_lockstep_and_staggered_clients():
    r = CliRunner()
    base = ["simulate", "--model", MODEL, "--tp", "1", "--num-requests", "48", "--prompt-len",
            "1024", "--output-len", "32", "--concurrency", "8"]
    txt = r.invoke(cli, base)
    assert txt.exit_code == 0, txt.output
    assert "clients' first requests" in txt.output and "all 8 at t=0" in txt.output
    js = r.invoke(cli, base + ["--json"])
    assert '"staggered_clients": {' in js.output
    off = r.invoke(cli, base + ["--json", "--no-compare-staggered"])
    assert '"staggered_clients": null' in off.output
    assert "clients' first requests" not in r.invoke(cli, base + ["--no-compare-staggered"]).output
