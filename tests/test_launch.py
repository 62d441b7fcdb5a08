"""Launch commands: exact argv for representative replica shapes, placement, and quoting."""

from __future__ import annotations

import shlex

import pytest

from apex_opt.errors import InputError
from apex_opt.registry import model_names
from apex_opt.report.launch import (Launch, hf_model_id, launch_commands, launch_plan,
                                    needs_trust_remote_code, render, sglang_argv, vllm_argv)
from apex_opt.specs.cluster import ClusterSpec
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup

LLAMA = "meta-llama/Llama-3.1-70B-Instruct"
VLLM_HEAD = ["vllm", "serve", LLAMA]


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


def test_hf_ids_of_bundled_models(llama, deepseek):
    assert hf_model_id("llama-3.1-70b", llama) == LLAMA
    assert hf_model_id("deepseek-v3", deepseek) == "deepseek-ai/DeepSeek-V3"
    assert needs_trust_remote_code("deepseek-v3", deepseek)
    assert not needs_trust_remote_code("llama-3.1-70b", llama)
    expected = {"kimi-k2": "moonshotai/Kimi-K2-Instruct", "qwen3-235b-a22b": "Qwen/Qwen3-235B-A22B",
                "mixtral-8x7b": "mistralai/Mixtral-8x7B-Instruct-v0.1",
                "mistral-large-2407": "mistralai/Mistral-Large-Instruct-2407"}
    for name, repo in expected.items():
        assert hf_model_id(name, load_model(name)) == repo


def test_every_bundled_model_has_a_repo():
    for name in model_names():
        repo = hf_model_id(name, load_model(name))
        assert repo.count("/") == 1 and " " not in repo, (name, repo)


def test_path_reference_is_the_local_model_dir(llama):
    assert hf_model_id("/models/llama/config.json", llama) == "/models/llama"
    assert hf_model_id("/models/llama", llama) == "/models/llama"
    assert not needs_trust_remote_code("/models/llama", llama)


def test_unknown_name_is_an_input_error(llama):
    renamed = llama.model_copy(update={"name": "no-such-model"})
    with pytest.raises(InputError, match="no-such-model"):
        hf_model_id("no-such-model", renamed)


def test_vllm_tp8_bf16():
    launch = vllm_argv(LLAMA, ReplicaGroup(tp=8))
    assert launch.argv == VLLM_HEAD + [
        "--port", "8000", "--tensor-parallel-size", "8", "--pipeline-parallel-size", "1",
        "--max-num-seqs", "256", "--max-num-batched-tokens", "512", "--enable-chunked-prefill",
        "--gpu-memory-utilization", "0.9"]
    assert launch.env == {} and launch.notes == []
    assert render(launch) == shlex.join(launch.argv)


def test_vllm_fp8_weights_and_kv_on_bf16_checkpoint():
    g = ReplicaGroup(tp=2, weight_dtype="fp8", kv_dtype="fp8", max_num_seqs=128,
                     gpu_memory_utilization=0.95, max_model_len=8192)
    launch = vllm_argv(LLAMA, g, port=9000, host="0.0.0.0")
    assert launch.argv == VLLM_HEAD + [
        "--host", "0.0.0.0", "--port", "9000", "--tensor-parallel-size", "2",
        "--pipeline-parallel-size", "1", "--max-num-seqs", "128", "--max-num-batched-tokens", "512",
        "--enable-chunked-prefill", "--gpu-memory-utilization", "0.95", "--max-model-len", "8192",
        "--quantization", "fp8", "--kv-cache-dtype", "fp8"]


def test_vllm_fp8_checkpoint_needs_no_quantization_flag(deepseek):
    g = ReplicaGroup(tp=8, ep=8, weight_dtype="fp8")
    launch = vllm_argv("deepseek-ai/DeepSeek-V3", g, checkpoint_dtype=deepseek.checkpoint_dtype,
                       trust_remote_code=True)
    assert "--quantization" not in launch.argv
    assert launch.argv[3] == "--trust-remote-code"
    assert "--enable-expert-parallel" in launch.argv


def test_vllm_bf16_from_fp8_checkpoint_is_flagged():
    launch = vllm_argv("deepseek-ai/DeepSeek-V3", ReplicaGroup(tp=8), checkpoint_dtype="fp8")
    assert "--quantization" not in launch.argv
    assert any("bf16 copy" in n for n in launch.notes)


def test_vllm_int4_needs_awq_checkpoint():
    launch = vllm_argv(LLAMA, ReplicaGroup(tp=2, weight_dtype="int4"))
    i = launch.argv.index("--quantization")
    assert launch.argv[i + 1] == "awq_marlin"
    assert any("AWQ checkpoint" in n for n in launch.notes)


def test_vllm_uneven_pp_split_goes_to_env():
    g = ReplicaGroup(tp=4, pp=2, layers_per_stage=(42, 38))
    launch = vllm_argv(LLAMA, g)
    assert launch.env == {"VLLM_PP_LAYER_PARTITION": "42,38"}
    assert launch.argv[5:9] == ["--tensor-parallel-size", "4", "--pipeline-parallel-size", "2"]
    line = render(launch)
    assert line.startswith("VLLM_PP_LAYER_PARTITION=42,38 vllm serve ")
    assert shlex.split(line) == ["VLLM_PP_LAYER_PARTITION=42,38"] + launch.argv


def test_vllm_ep_chunked_off_custom_ar_off_eager():
    g = ReplicaGroup(tp=8, ep=8, chunked_prefill=False, custom_allreduce=False, cuda_graphs=False,
                     max_model_len=32768)
    launch = vllm_argv("mistralai/Mixtral-8x7B-Instruct-v0.1", g, model_max_len=32768)
    assert launch.argv == ["vllm", "serve", "mistralai/Mixtral-8x7B-Instruct-v0.1",
                           "--port", "8000", "--tensor-parallel-size", "8",
                           "--pipeline-parallel-size", "1", "--enable-expert-parallel",
                           "--max-num-seqs", "256", "--max-num-batched-tokens", "32768",
                           "--enable-chunked-prefill=False", "--gpu-memory-utilization", "0.9",
                           "--max-model-len", "32768", "--disable-custom-all-reduce",
                           "--enforce-eager"]


def test_vllm_partial_ep_is_explained():
    launch = vllm_argv(LLAMA, ReplicaGroup(tp=8, ep=2))
    assert any("EP = TP" in n for n in launch.notes)


def test_vllm_budget_below_max_num_seqs_is_flagged():
    launch = vllm_argv(LLAMA, ReplicaGroup(tp=8, max_num_seqs=1024))
    assert any("max_num_batched_tokens (512) < max_num_seqs (1024)" in n for n in launch.notes)


def test_sglang_argv():
    g = ReplicaGroup(tp=8, ep=4, weight_dtype="fp8", kv_dtype="fp8", max_num_seqs=64,
                     max_num_batched_tokens=4096, gpu_memory_utilization=0.85,
                     max_model_len=16384, cuda_graphs=False, custom_allreduce=False)
    launch = sglang_argv(LLAMA, g, port=30000)
    assert launch.argv == [
        "python", "-m", "sglang.launch_server", "--model-path", LLAMA, "--port", "30000",
        "--tp", "8", "--ep-size", "4", "--max-running-requests", "64",
        "--chunked-prefill-size", "4096", "--mem-fraction-static", "0.85",
        "--context-length", "16384", "--quantization", "fp8", "--kv-cache-dtype", "fp8_e4m3",
        "--disable-custom-all-reduce", "--disable-cuda-graph"]


def test_sglang_chunked_off_and_pp():
    g = ReplicaGroup(tp=4, pp=2, layers_per_stage=(40, 40), chunked_prefill=False)
    launch = sglang_argv(LLAMA, g, model_max_len=131072)
    a = launch.argv
    assert a[a.index("--pp-size") + 1] == "2"
    assert a[a.index("--chunked-prefill-size") + 1] == "-1"
    assert a[a.index("--max-prefill-tokens") + 1] == "131072"
    assert launch.env == {"SGLANG_PP_LAYER_PARTITION": "40,40"}
    with pytest.raises(InputError, match="dist_init_addr"):
        sglang_argv(LLAMA, g, nnodes=2)


def test_render_quotes_awkward_values():
    launch = Launch(argv=["vllm", "serve", "/models/my model's dir", "--port", "8000"],
                    env={"B": "x y", "A": "1"})
    line = render(launch)
    assert line.startswith("A=1 B='x y' vllm serve ")
    assert shlex.split(line) == ["A=1", "B=x y"] + launch.argv


def test_two_tp4_replicas_share_a_node(llama):
    plan = Plan(groups=[ReplicaGroup(tp=4, replicas=2)])
    out = launch_commands("llama-3.1-70b", llama, plan)
    reps = out["groups"][0]["replicas"]
    assert [r["cuda_visible_devices"] for r in reps] == ["0,1,2,3", "4,5,6,7"]
    assert [r["port"] for r in reps] == [8000, 8001]
    assert [r["nodes"] for r in reps] == [[0], [0]]
    for r in reps:
        (cmd,) = r["commands"]
        assert cmd["command"] == (f"CUDA_VISIBLE_DEVICES={r['cuda_visible_devices']} "
                                  + shlex.join(cmd["launch"]["argv"]))
        assert cmd["launch"]["argv"][:3] == VLLM_HEAD
        assert cmd["launch"]["argv"][4] == str(r["port"])
    assert any("load balancer" in n for n in out["notes"])


def test_packing_moves_to_the_next_node_when_a_replica_does_not_fit(llama):
    plan = Plan(groups=[ReplicaGroup(tp=2, replicas=3), ReplicaGroup(tp=4, replicas=2)])
    lp = launch_plan("llama-3.1-70b", llama, plan, cluster=_cluster())
    a, b = lp.groups
    assert [(r.nodes, r.cuda_visible_devices, r.port) for r in a.replicas] == [
        ([0], "0,1", 8000), ([0], "2,3", 8001), ([0], "4,5", 8002)]
    assert [(r.nodes, r.cuda_visible_devices, r.port) for r in b.replicas] == [
        ([1], "0,1,2,3", 8000), ([1], "4,5,6,7", 8001)]
    assert a.pool == "h100"


def test_whole_node_replica_has_no_device_mask(llama):
    lp = launch_plan("llama-3.1-70b", llama, Plan(groups=[ReplicaGroup(tp=8, replicas=2)]))
    assert [(r.nodes, r.cuda_visible_devices, r.port) for r in lp.groups[0].replicas] == [
        ([0], None, 8000), ([1], None, 8000)]
    assert lp.notes and "least_outstanding" in lp.notes[0]


def test_multi_node_pp_vllm_uses_ray(llama):
    plan = Plan(groups=[ReplicaGroup(tp=8, pp=2, layers_per_stage=(41, 39))])
    lp = launch_plan("llama-3.1-70b", llama, plan, cluster=_cluster())
    (rep,) = lp.groups[0].replicas
    assert rep.nodes == [0, 1]
    head, worker, serve = rep.commands
    assert (head.node, head.launch.argv) == (0, ["ray", "start", "--head", "--port=6379"])
    assert (worker.node, worker.launch.argv) == (1, ["ray", "start",
                                                     "--address=H100_NODE0_IP:6379"])
    assert serve.node == 0
    assert serve.launch.argv[serve.launch.argv.index("--distributed-executor-backend") + 1] == "ray"
    assert all(c.launch.env == {"VLLM_PP_LAYER_PARTITION": "41,39"} for c in rep.commands)
    assert any("Ray" in n for n in lp.groups[0].notes)
    assert lp.notes == []


def test_multi_node_sglang_one_process_per_node(llama):
    plan = Plan(groups=[ReplicaGroup(tp=8, pp=2)])
    lp = launch_plan("llama-3.1-70b", llama, plan, engine="sglang")
    cmds = lp.groups[0].replicas[0].commands
    assert [c.node for c in cmds] == [0, 1]
    for rank, c in enumerate(cmds):
        a = c.launch.argv
        assert a[a.index("--nnodes") + 1] == "2"
        assert a[a.index("--node-rank") + 1] == str(rank)
        assert a[a.index("--dist-init-addr") + 1] == "NODE0_IP:50000"


def test_plan_errors(llama):
    with pytest.raises(InputError, match="sum to the model's 80"):
        launch_plan("llama-3.1-70b", llama,
                    Plan(groups=[ReplicaGroup(tp=8, pp=2, layers_per_stage=(40, 39))]))
    with pytest.raises(InputError, match="needs 2 nodes"):
        launch_plan("llama-3.1-70b", llama, Plan(groups=[ReplicaGroup(tp=8, replicas=2)]),
                    cluster=_cluster(nodes=1))
    with pytest.raises(InputError, match="pool"):
        launch_plan("llama-3.1-70b", llama, Plan(groups=[ReplicaGroup(tp=8, pool="a100")]),
                    cluster=_cluster())
    with pytest.raises(InputError, match="engine"):
        launch_plan("llama-3.1-70b", llama, Plan(groups=[ReplicaGroup(tp=8)]),
                    engine="trtllm")  # type: ignore[arg-type]


def test_every_command_round_trips_through_the_shell(llama, deepseek):
    plan = Plan(groups=[ReplicaGroup(tp=4, pp=4, layers_per_stage=(16, 15, 15, 15), ep=4,
                                     weight_dtype="fp8", kv_dtype="fp8", cuda_graphs=False),
                        ReplicaGroup(tp=2, replicas=4, chunked_prefill=False)])
    for engine in ("vllm", "sglang"):
        out = launch_commands("deepseek-v3", deepseek, plan, engine=engine)
        for g in out["groups"]:
            for r in g["replicas"]:
                for c in r["commands"]:
                    env = [f"{k}={v}" for k, v in sorted(c["launch"]["env"].items())]
                    assert shlex.split(c["command"]) == env + c["launch"]["argv"]
