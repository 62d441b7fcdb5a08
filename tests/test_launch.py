"""Launch commands that run as printed: argv per engine profile, checkpoints, placement and labels,
data-parallel routing, --max-model-len, flags checked against each release's vocabulary, and the
rendered script executed by a real shell."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from apex_opt.errors import InputError
from apex_opt.registry import load_cluster, model_names
from apex_opt.report.launch import (Launch, hf_model_id, launch_commands, launch_plan,
                                    needs_trust_remote_code, render, sglang_argv, unknown_flags,
                                    vllm_argv, vocabulary)
from apex_opt.specs.cluster import ClusterSpec
from apex_opt.specs.engine import engine_names, load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup

LLAMA = "meta-llama/Llama-3.1-70B-Instruct"


@pytest.fixture(scope="module")
def llama():
    return load_model("llama-3.1-70b")


@pytest.fixture(scope="module")
def deepseek():
    return load_model("deepseek-v3")


def _cluster(nodes: int = 2, gpn: int = 8) -> ClusterSpec:
    return ClusterSpec.model_validate({"name": "c", "pools": [{
        "name": "h100", "device": "h100-sxm-80gb", "nodes": nodes, "gpus_per_node": gpn,
        "intra_node": {"kind": "nvswitch", "bandwidth_gbps": 450, "latency_us": 2},
        "inter_node": {"kind": "infiniband", "bandwidth_gbps": 50, "latency_us": 6}}]})


def _plan(**kw) -> Plan:
    return Plan(groups=(ReplicaGroup(**kw),))


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# ------------------------------------------------------------------------------- model argument
def test_hf_ids_of_bundled_models(llama, deepseek):
    assert hf_model_id("llama-3.1-70b", llama) == LLAMA
    assert hf_model_id("deepseek-v3", deepseek) == "deepseek-ai/DeepSeek-V3"
    assert needs_trust_remote_code("deepseek-v3", deepseek)
    assert not needs_trust_remote_code("llama-3.1-70b", llama)


def test_every_bundled_model_has_a_repo():
    for name in model_names():
        assert "/" in hf_model_id(name, load_model(name))


def test_local_config_becomes_an_absolute_folder_or_the_hf_id(tmp_path, monkeypatch, llama):
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert hf_model_id("my-model/config.json", llama) == str(d)  # absolute, not 'my-model'
    assert hf_model_id("my-model/config.json", llama, hf_id="org/name") == "org/name"
    lp = launch_plan("my-model/config.json", llama, _plan(tp=8), cluster=load_cluster("h100-sxm-1x8"))
    assert lp.processes[0].argv[2] == str(d)
    assert any("no weights" in n and "--hf-id" in n for n in lp.notes)
    lp = launch_plan("my-model/config.json", llama, _plan(tp=8), hf_id="org/name",
                     cluster=load_cluster("h100-sxm-1x8"))
    assert lp.processes[0].argv[2] == "org/name" and not any("no weights" in n for n in lp.notes)


def test_unknown_name_is_an_input_error(llama):
    with pytest.raises(InputError, match="--hf-id"):
        hf_model_id("no-such-model", llama.model_copy(update={"name": "no-such-model"}))


# ------------------------------------------------------------------------------- checkpoints
def test_fp8_from_bf16_is_online_quantisation(llama):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=8, weight_dtype="fp8", kv_dtype="fp8"),
                     engine="vllm-0.6")
    argv = lp.processes[0].argv
    assert _flag(argv, "--quantization") == "fp8" and _flag(argv, "--kv-cache-dtype") == "fp8"
    assert any("quantised online" in n for n in lp.notes)


def test_fp8_checkpoint_needs_no_quantization_flag(deepseek):
    lp = launch_plan("deepseek-v3", deepseek, _plan(tp=8, pp=2, weight_dtype="fp8"),
                     cluster=_cluster())
    server = [p for p in lp.processes if p.role == "server"][0]
    assert "--quantization" not in server.argv and "--trust-remote-code" in server.argv


def test_int4_needs_an_awq_or_gptq_checkpoint(llama, tmp_path):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=4, weight_dtype="int4"))
    assert lp.processes[0].argv[2] == "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
    assert any("pre-quantised checkpoint" in n for n in lp.notes)
    qwen = load_model("qwen2.5-32b")  # no published int4 copy in the table: the shell must be told
    lp = launch_plan("qwen2.5-32b", qwen, _plan(tp=4, weight_dtype="int4"))
    model_arg = lp.processes[0].argv[2]
    assert model_arg.startswith("${INT4_CHECKPOINT:?") and "--quantization" not in lp.processes[0].argv
    assert any("AWQ or GPTQ" in n for n in lp.notes)
    lp = launch_plan("qwen2.5-32b", qwen, _plan(tp=4, weight_dtype="int4"), hf_id="org/qwen-awq")
    assert lp.processes[0].argv[2] == "org/qwen-awq"


def test_bf16_from_an_fp8_checkpoint_needs_a_copy(deepseek):
    lp = launch_plan("deepseek-v3", deepseek, _plan(tp=8, pp=4, weight_dtype="bf16"),
                     cluster=load_cluster("h100-sxm-4x8"))
    server = [p for p in lp.processes if p.role == "server"][0]
    assert server.argv[2].startswith("${BF16_CHECKPOINT:?")


# ------------------------------------------------------------------------------- argv per engine
def test_vllm_06_switches_chunked_prefill_with_its_own_spelling(llama):
    on = vllm_argv(LLAMA, ReplicaGroup(tp=8, chunked_prefill=True, max_num_batched_tokens=2048),
                   engine="vllm-0.6", model_max_len=llama.max_position_embeddings)
    off = vllm_argv(LLAMA, ReplicaGroup(tp=8, chunked_prefill=False, max_model_len=8192),
                    engine="vllm-0.6", model_max_len=llama.max_position_embeddings)
    assert "--enable-chunked-prefill" in on.argv and _flag(on.argv, "--max-num-batched-tokens") == "2048"
    # vLLM 0.6 parses the flag with StoreBoolean: "=False" is the off form, and the unchunked
    # budget is max(max_model_len, 2048), as the plan was simulated
    assert "--enable-chunked-prefill=False" in off.argv
    assert _flag(off.argv, "--max-num-batched-tokens") == "8192"


def test_vllm_v1_always_chunks(llama):
    a = vllm_argv(LLAMA, ReplicaGroup(tp=8, max_num_batched_tokens=8192), engine="vllm",
                  model_max_len=llama.max_position_embeddings)
    assert not any(t.startswith("--enable-chunked-prefill") for t in a.argv)
    b = vllm_argv(LLAMA, ReplicaGroup(tp=8, chunked_prefill=False, max_num_batched_tokens=8192),
                  engine="vllm", model_max_len=llama.max_position_embeddings)
    assert any("always chunks" in n for n in b.notes)


def test_uneven_pp_split_goes_to_env():
    g = ReplicaGroup(tp=4, pp=2, layers_per_stage=(39, 41))
    assert vllm_argv(LLAMA, g).env == {"VLLM_PP_LAYER_PARTITION": "39,41"}
    assert sglang_argv(LLAMA, g).env == {"SGLANG_PP_LAYER_PARTITION": "39,41"}


def test_sglang_argv():
    a = sglang_argv(LLAMA, ReplicaGroup(tp=4, ep=2, kv_dtype="fp8", max_num_batched_tokens=4096,
                                        chunked_prefill=True, cuda_graphs=False))
    assert a.argv[:5] == ["python", "-m", "sglang.launch_server", "--model-path", LLAMA]
    assert _flag(a.argv, "--tp-size") == "4" and _flag(a.argv, "--ep-size") == "2"
    assert _flag(a.argv, "--chunked-prefill-size") == "4096"
    assert _flag(a.argv, "--kv-cache-dtype") == "fp8_e4m3" and "--disable-cuda-graph" in a.argv
    off = sglang_argv(LLAMA, ReplicaGroup(tp=2, chunked_prefill=False, max_num_batched_tokens=16384))
    assert _flag(off.argv, "--chunked-prefill-size") == "-1"
    assert _flag(off.argv, "--max-prefill-tokens") == "16384"


# ------------------------------------------------------------------------------- placement
def test_dp_without_engine_support_is_n_ports_and_a_load_balancer(llama):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=4, replicas=2), engine="vllm-0.6",
                     cluster=load_cluster("h100-sxm-1x8"))
    s = [p for p in lp.processes if p.role == "server"]
    assert [(p.cuda_visible_devices, p.port) for p in s] == [("0,1,2,3", 8000), ("4,5,6,7", 8001)]
    assert [p.replicas for p in s] == [[0], [1]]
    assert len(lp.endpoints) == 2 and any("load balancer" in n for n in lp.notes)


@pytest.mark.parametrize("engine, flag", [("vllm", "--data-parallel-size"), ("sglang", "--dp-size")])
def test_dp_with_engine_support_is_one_server(llama, engine, flag):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=4, replicas=2), engine=engine,
                     cluster=load_cluster("h100-sxm-1x8"))
    assert len(lp.processes) == 1 and lp.processes[0].replicas == [0, 1]
    assert _flag(lp.processes[0].argv, flag) == "2"
    assert lp.processes[0].cuda_visible_devices is None  # the whole node
    assert len(lp.endpoints) == 1 and any(flag in n and "balances" in n for n in lp.notes)


def test_sglang_dp_launches_the_router_it_was_simulated_with(llama):
    """SGLang's default DP routing is sgl-router's cache-aware policy: the launch starts the
    workers through sglang_router; a plan simulated round robin keeps SGLang's own --dp-size."""
    plan = _plan(tp=4, replicas=2)
    lp = launch_plan("llama-3.1-70b", llama, plan, engine="sglang", cluster=load_cluster("h100-sxm-1x8"))
    assert lp.processes[0].argv[:3] == ["python", "-m", "sglang_router.launch_server"]
    assert any("cache-aware" in n for n in lp.notes)
    rr = launch_plan("llama-3.1-70b", llama, plan.model_copy(update={"router": "round_robin"}),
                     engine="sglang", cluster=load_cluster("h100-sxm-1x8"))
    assert rr.processes[0].argv[:3] == ["python", "-m", "sglang.launch_server"]
    assert any("round robin" in n for n in rr.notes) and not unknown_flags(rr, "sglang")


def test_packing_moves_to_the_next_node(llama):
    plan = Plan(groups=(ReplicaGroup(tp=2, replicas=3, weight_dtype="fp8"),
                        ReplicaGroup(tp=4, replicas=1, weight_dtype="fp8")))
    lp = launch_plan("llama-3.1-70b", llama, plan, engine="vllm-0.6", cluster=_cluster())
    s = [(p.node, p.cuda_visible_devices) for p in lp.processes]
    assert s == [(0, "0,1"), (0, "2,3"), (0, "4,5"), (1, "0,1,2,3")]


def test_multi_node_vllm_uses_ray_with_distinct_lines_per_node(llama):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=8, pp=2, layers_per_stage=(40, 40)),
                     engine="vllm-0.6", cluster=_cluster())
    roles = [(p.role, p.node) for p in lp.processes]
    assert roles == [("ray-head", 0), ("ray-worker", 1), ("server", 0)]
    assert lp.processes[1].argv == ["ray", "start", "--address=H100_NODE0_IP:6379"]
    assert _flag(lp.processes[2].argv, "--distributed-executor-backend") == "ray"
    assert all(p.env.get("VLLM_PP_LAYER_PARTITION") == "40,40" for p in lp.processes)


def test_multi_node_sglang_one_process_per_node_with_its_rank(llama):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=8, pp=2), engine="sglang", cluster=_cluster())
    assert [(p.node, _flag(p.argv, "--node-rank")) for p in lp.processes] == [(0, "0"), (1, "1")]
    assert all(_flag(p.argv, "--dist-init-addr") == "H100_NODE0_IP:50000" for p in lp.processes)
    assert lp.processes[0].command != lp.processes[1].command


def test_plan_errors(llama):
    with pytest.raises(InputError, match="pool"):
        launch_plan("llama-3.1-70b", llama, _plan(tp=8, pool="a100"), cluster=_cluster())
    # the rules of apex_opt.parallel: validate_plan on a cluster, the pool-free ones without
    with pytest.raises(InputError, match="plan uses 24 GPUs, the pool has 16"):
        launch_plan("llama-3.1-70b", llama, _plan(tp=8, replicas=3), cluster=_cluster())
    with pytest.raises(InputError, match="layers"):
        launch_plan("llama-3.1-70b", llama, _plan(tp=8, pp=2, layers_per_stage=(10, 10)))
    with pytest.raises(InputError, match="layers_per_stage sums to 20"):
        launch_plan("llama-3.1-70b", llama, _plan(tp=8, pp=2, layers_per_stage=(10, 10)),
                    cluster=_cluster())
    with pytest.raises(InputError, match="attention heads"):
        launch_plan("llama-3.1-70b", llama, _plan(tp=3))
    with pytest.raises(InputError, match="tp=16 exceeds the 8 GPUs of one node of pool .*inside one node only"):
        launch_plan("llama-3.1-70b", llama, _plan(tp=16), cluster=_cluster())


# ------------------------------------------------------------------------------- labels / json
def test_every_process_is_labelled_in_the_script(llama):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=2, replicas=2, weight_dtype="fp8"),
                     engine="vllm-0.6", cluster=load_cluster("h100-sxm-1x8"))
    for p in lp.processes:
        assert f"# {p.label}\n{p.command}" in lp.script
        assert f"node {p.node} of pool h100" in p.label and "replica" in p.label
        assert "GPUs" in p.label and f"port {p.port}" in p.label
    # long commands are continued with backslashes, one flag per line
    assert " \\\n    --tensor-parallel-size 2" in lp.script


def test_json_has_structured_process_data(llama):
    d = launch_commands("llama-3.1-70b", llama, _plan(tp=4, replicas=2), engine="vllm-0.6",
                        cluster=load_cluster("h100-sxm-1x8"))
    json.dumps(d)
    p = d["processes"][1]
    assert {"node", "pool", "device_ids", "port", "env", "argv", "command", "label"} <= set(p)
    assert p["device_ids"] == [4, 5, 6, 7] and p["env"]["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert p["argv"][:3] == ["vllm", "serve", LLAMA]


def test_gpu_clock_and_power_cap_commands_come_first(llama):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=4, replicas=2, sm_clock_mhz=1410,
                                                   power_cap_w=500),
                     engine="vllm-0.6", cluster=load_cluster("h100-sxm-1x8"))
    roles = [p.role for p in lp.processes]
    assert roles[0] == "gpu-settings" and roles.index("server") > 0
    cmds = [p.command for p in lp.processes if p.role == "gpu-settings"]
    assert any("-lgc 1410,1410" in c and "-i 0,1,2,3" in c for c in cmds)
    assert any("-pl 500" in c and "-i 4,5,6,7" in c for c in cmds)


# ------------------------------------------------------------------------------- max_model_len
def test_max_model_len_defaults_to_the_models_when_it_fits(llama):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=8, weight_dtype="fp8"),
                     cluster=load_cluster("h100-sxm-1x8"))
    assert lp.max_model_len == llama.max_position_embeddings == 131072
    assert _flag(lp.processes[0].argv, "--max-model-len") == "131072"


def test_max_model_len_is_the_largest_that_fits_with_a_note():
    m = load_model("qwen2.5-32b")  # 65 GB of bf16 weights on one 80 GB GPU: a few GB of KV
    lp = launch_plan("qwen2.5-32b", m, _plan(tp=1), cluster=load_cluster("h100-sxm-1x8"))
    assert 1024 < lp.max_model_len < m.max_position_embeddings
    note = next(n for n in lp.notes if n.startswith("--max-model-len"))
    assert "KV cache" in note and f"{m.max_position_embeddings:,}" in note


def test_requested_max_model_len_wins_and_is_checked(llama):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=8), max_model_len=32768)
    assert _flag(lp.processes[0].argv, "--max-model-len") == "32768"
    with pytest.raises(InputError, match="maximum context"):
        launch_plan("llama-3.1-70b", llama, _plan(tp=8), max_model_len=10**6)


# ------------------------------------------------------------------------------- dry run
_PLANS = [
    dict(tp=8, weight_dtype="fp8", kv_dtype="fp8", max_num_batched_tokens=2048),
    dict(tp=4, replicas=2, chunked_prefill=False, max_model_len=8192),
    dict(tp=2, pp=2, layers_per_stage=(41, 39), custom_allreduce=False, cuda_graphs=False,
         max_num_seqs=64, max_num_batched_tokens=512),
    dict(tp=8, pp=2),                       # two nodes
]


@pytest.mark.parametrize("engine", engine_names())
def test_every_printed_flag_exists_in_the_simulated_release(llama, engine):
    """A --dry-run of the argument parser: each flag of every command must be in the vocabulary
    of the engine profile the plan is simulated with (apex_opt/data/engines/*.yaml)."""
    spec = load_engine(engine)
    assert vocabulary(spec), f"engine profile {engine} has no flag_vocabulary"
    for kw in _PLANS:
        lp = launch_plan("llama-3.1-70b", llama, _plan(**kw), engine=engine, cluster=_cluster())
        assert unknown_flags(lp) == [], (engine, kw)
    moe = load_model("qwen3-30b-a3b")
    lp = launch_plan("qwen3-30b-a3b", moe, _plan(tp=4, ep=4), engine=engine, cluster=_cluster())
    assert unknown_flags(lp) == []


def test_unknown_flags_catches_a_misspelling(llama):
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=8), engine="vllm")
    bad = lp.model_copy(update={"processes": [lp.processes[0].model_copy(
        update={"argv": lp.processes[0].argv + ["--max-num-seq", "8"]})]})
    assert unknown_flags(bad) == ["--max-num-seq"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("engine", ["vllm-0.6", "vllm", "sglang"])
def test_the_script_runs_in_a_real_shell_as_printed(llama, engine, tmp_path):
    """Run the rendered script with bash, with `vllm`, `python`, `ray` and `sudo` replaced by
    functions that print their environment and arguments: every command must reach the engine
    with exactly the argv and env of its process."""
    plan = Plan(groups=(ReplicaGroup(tp=2, replicas=2, layers_per_stage=None, weight_dtype="int4",
                                     max_num_batched_tokens=1024),
                        ReplicaGroup(tp=8, pp=2, layers_per_stage=(41, 39))))
    lp = launch_plan("llama-3.1-70b", llama, plan, engine=engine, cluster=_cluster(nodes=3),
                     hf_id="${INT4_CHECKPOINT:?set INT4_CHECKPOINT}")
    stub = ('_show() { printf "%s\\0" "CVD=${CUDA_VISIBLE_DEVICES-}" '
            '"PART=${VLLM_PP_LAYER_PARTITION-}${SGLANG_PP_LAYER_PARTITION-}" "$@"; printf "\\n"; }\n'
            'vllm() { _show vllm "$@"; }\npython() { _show python "$@"; }\nray() { _show ray "$@"; }\n')
    out = subprocess.run(["bash", "-c", stub + lp.script], capture_output=True, text=True,
                         env={"INT4_CHECKPOINT": "org/awq", "PATH": "/usr/bin:/bin"}, check=True)
    got = [line.split("\0")[:-1] for line in out.stdout.split("\n") if line]
    want = [[f"CVD={p.env.get('CUDA_VISIBLE_DEVICES', '')}",
             "PART=" + p.env.get("VLLM_PP_LAYER_PARTITION", p.env.get("SGLANG_PP_LAYER_PARTITION", "")),
             *[("org/awq" if a.startswith("${INT4_CHECKPOINT") else a) for a in p.argv]]
            for p in lp.processes]
    assert got == want


def test_render_quotes_and_wraps():
    short = Launch(argv=["ray", "start", "--head"], env={})
    assert render(short) == "ray start --head"
    long = Launch(argv=["vllm", "serve", "a b"] + [f"--flag-{i}" for i in range(12)],
                  env={"X": "1 2"})
    text = render(long)
    assert text.splitlines()[0] == "X='1 2' vllm serve 'a b' \\"
    assert all(line.startswith("    --flag-") for line in text.splitlines()[1:])


@pytest.mark.parametrize("engine, on, off", [("vllm-0.6", "--enable-prefix-caching", None),
                                             ("sglang", None, "--disable-radix-cache")])
def test_prefix_caching_flag_only_when_it_differs_from_the_default(llama, engine, on, off):
    spec = load_engine(engine)
    same = launch_plan("llama-3.1-70b", llama, _plan(tp=8, prefix_caching=spec.prefix_caching),
                       engine=engine)
    assert not any("prefix" in t or "radix" in t for t in same.processes[0].argv)
    other = launch_plan("llama-3.1-70b", llama, _plan(tp=8, prefix_caching=not spec.prefix_caching),
                        engine=engine)
    flag = on if not spec.prefix_caching else off
    assert flag in other.processes[0].argv
    assert unknown_flags(other) == []


def test_sglang_data_parallel_attention(deepseek):
    if "attention_dp" not in ReplicaGroup.model_fields:
        pytest.skip("plan has no attention_dp field")
    plan = _plan(tp=8, attention_dp=8, weight_dtype="fp8", replicas=2)
    lp = launch_plan("deepseek-v3", deepseek, plan, engine="sglang", cluster=_cluster())
    assert len(lp.processes) == 2  # --dp-size is taken by attention DP: one server per replica
    argv = lp.processes[0].argv
    assert "--enable-dp-attention" in argv and _flag(argv, "--dp-size") == "8"
    assert unknown_flags(lp) == []
    # vLLM V1: 8 engine cores (--data-parallel-size 8) of TP1 each, the MoE over all 8 GPUs
    v = launch_plan("deepseek-v3", deepseek, plan, engine="vllm", cluster=_cluster())
    argv = v.processes[0].argv
    assert _flag(argv, "--data-parallel-size") == "8" and _flag(argv, "--tensor-parallel-size") == "1"
    assert unknown_flags(v) == []
    # vLLM 0.6 (V0) has no DP: the note says the plan runs as plain TP
    v0 = launch_plan("deepseek-v3", deepseek, plan, engine="vllm-0.6", cluster=_cluster())
    assert any("attention_dp=8" in n for n in v0.notes)


# ------------------------------------------------------------------------------- multi-node DP
def _lab() -> ClusterSpec:
    """Two 4-GPU H100 nodes (the README's example cluster)."""
    return ClusterSpec.model_validate({"name": "lab", "pools": [{
        "name": "lab", "device": "h100-sxm-80gb", "nodes": 2, "gpus_per_node": 4,
        "intra_node": {"kind": "nvlink", "bandwidth_gbps": 450, "latency_us": 2},
        "inter_node": {"kind": "infiniband", "bandwidth_gbps": 50, "latency_us": 5}}]})


def test_vllm_dp_over_nodes_is_one_head_and_headless_engines(llama):
    """vLLM V1's default routing is its internal balancer over ALL replicas: 2xTP4 on two 4-GPU
    nodes is one deployment (head with the API server + a --headless node), one endpoint."""
    lp = launch_plan("llama-3.1-70b", llama, _plan(tp=4, replicas=2, weight_dtype="fp8"),
                     engine="vllm", cluster=_lab())
    head, other = lp.processes
    assert (head.role, head.node, head.port, head.replicas) == ("server", 0, 8000, [0])
    assert (other.role, other.node, other.port, other.replicas) == ("server-rank", 1, None, [1])
    assert "--headless" in other.argv and "--headless" not in head.argv
    assert "--port" not in other.argv
    for p in (head, other):
        assert _flag(p.argv, "--data-parallel-size") == "2"
        assert _flag(p.argv, "--data-parallel-size-local") == "1"
        assert _flag(p.argv, "--data-parallel-address") == "LAB_NODE0_IP"
        assert p.device_ids == [0, 1, 2, 3] and p.cuda_visible_devices is None
    assert _flag(head.argv, "--data-parallel-rpc-port") == _flag(other.argv,
                                                                  "--data-parallel-rpc-port")
    assert "--data-parallel-start-rank" not in head.argv
    assert _flag(other.argv, "--data-parallel-start-rank") == "1"
    assert [(e.node_addr, e.port, e.replicas) for e in lp.endpoints] == [("LAB_NODE0_IP", 8000, 2)]
    assert not any("endpoints (" in n for n in lp.notes)  # no external balancer to set up
    assert any("--headless" in n and "one API server" in n for n in lp.notes)
    assert unknown_flags(lp) == []
    assert "# node 1 of pool lab (LAB_NODE1_IP)" in lp.script and "headless" in other.label
    # the servers' own notes still reach the operator
    off = launch_plan("llama-3.1-70b", llama, _plan(tp=4, replicas=2, weight_dtype="fp8",
                                                    chunked_prefill=False, max_model_len=8192),
                      engine="vllm", cluster=_lab())
    assert len(off.endpoints) == 1 and any("always chunks" in n for n in off.notes)


def test_vllm_dp_over_nodes_ranks_follow_the_nodes(llama):
    """3xTP2 on two 4-GPU nodes: ranks 0-1 on the head (GPUs 0-3), rank 2 headless on node 1
    with its own CUDA_VISIBLE_DEVICES; a second group gets its own head port and RPC port."""
    plan = Plan(groups=(ReplicaGroup(tp=2, replicas=3, weight_dtype="fp8"),))
    lp = launch_plan("llama-3.1-70b", llama, plan, engine="vllm", cluster=_lab())
    head, other = lp.processes
    assert [_flag(p.argv, "--data-parallel-size-local") for p in lp.processes] == ["2", "1"]
    assert _flag(other.argv, "--data-parallel-start-rank") == "2"
    assert (head.replicas, other.replicas) == ([0, 1], [2])
    assert (head.cuda_visible_devices, other.cuda_visible_devices) == (None, "0,1")
    assert len(lp.endpoints) == 1 and lp.endpoints[0].replicas == 3
    two = Plan(groups=(ReplicaGroup(tp=2, replicas=3, weight_dtype="fp8"),
                       ReplicaGroup(tp=1, replicas=2, weight_dtype="fp8")))
    cl = _lab().model_copy(update={"pools": [_lab().pools[0].model_copy(update={"nodes": 3})]})
    lp = launch_plan("llama-3.1-70b", llama, two, engine="vllm", cluster=cl)
    rpc = {_flag(p.argv, "--data-parallel-rpc-port") for p in lp.processes if p.group == 1}
    assert len(rpc) == 1 and rpc != {_flag(lp.processes[0].argv, "--data-parallel-rpc-port")}
    assert len(lp.endpoints) == 2 and unknown_flags(lp) == []


@pytest.mark.parametrize("engine, router", [("vllm-0.6", "engine"), ("vllm", "round_robin"),
                                            ("vllm", "least_outstanding")])
def test_dp_over_nodes_without_the_engine_balancer_keeps_endpoints(llama, engine, router):
    """vLLM 0.6 has no multi-node DP; a V1 plan simulated with another router keeps one endpoint
    per node, and the note names the external balancer the simulation assumed."""
    plan = _plan(tp=4, replicas=2, weight_dtype="fp8").model_copy(update={"router": router})
    lp = launch_plan("llama-3.1-70b", llama, plan, engine=engine, cluster=_lab())
    assert [(p.role, p.node, p.port) for p in lp.processes] == [("server", 0, 8000),
                                                                 ("server", 1, 8000)]
    assert not any(t in p.argv for p in lp.processes for t in ("--headless",
                                                                 "--data-parallel-address"))
    assert len(lp.endpoints) == 2
    lb = next(n for n in lp.notes if n.startswith("2 endpoints"))
    want = "round-robin" if router == "round_robin" else "least-outstanding"
    assert want in lb and unknown_flags(lp) == []


@pytest.mark.parametrize("engine", ["sglang", "sglang-0.4"])
def test_sglang_mixed_chunk_flag_only_when_set(llama, engine):
    off = launch_plan("llama-3.1-70b", llama, _plan(tp=8), engine=engine)
    assert "--enable-mixed-chunk" not in off.processes[0].argv
    on = launch_plan("llama-3.1-70b", llama, _plan(tp=8, mixed_chunk=True), engine=engine)
    assert "--enable-mixed-chunk" in on.processes[0].argv
    assert unknown_flags(on) == []
