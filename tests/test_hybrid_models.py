"""Hybrid layer stacks: per-layer attention kinds (full / sliding-window / Gated DeltaNet linear
attention), their parameters, KV / recurrent-state memory, admission and attention cost.

Configs are small dicts written here in the shape of the real families' config.json (gpt-oss:
``layer_types`` + ``sliding_window``; Qwen3.5: ``layer_types`` with ``linear_attention`` and the
``linear_*`` keys, ``attn_output_gate``; Qwen3-Next: ``full_attention_interval``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.costmodel.attention import window_chunks
from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.errors import InputError
from apex_opt.memory import replica_memory, stage_kv_layout
from apex_opt.registry import load_cluster
from apex_opt.sim.simulator import simulate
from apex_opt.sim.workload import Requests
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import ModelSpec
from apex_opt.specs.plan import Plan, ReplicaConfig, ReplicaGroup

H, L, HEADS, KV, HD, V = 1024, 8, 16, 4, 128, 32000


def _gptoss_like(**kw) -> dict:
    cfg = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": H,
           "num_hidden_layers": L, "num_attention_heads": HEADS, "num_key_value_heads": KV,
           "head_dim": HD, "intermediate_size": 2048, "vocab_size": V,
           "max_position_embeddings": 32768, "sliding_window": 128,
           "layer_types": ["sliding_attention", "full_attention"] * (L // 2)}
    cfg.update(kw)
    return cfg


LIN = {"linear_num_key_heads": 4, "linear_num_value_heads": 8, "linear_key_head_dim": 64,
       "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4}


def _qwen35_like(**kw) -> dict:
    cfg = {"architectures": ["Qwen3_5MoeForCausalLM"], "model_type": "qwen3_5_moe_text",
           "hidden_size": H, "num_hidden_layers": L, "num_attention_heads": HEADS,
           "num_key_value_heads": KV, "head_dim": HD, "vocab_size": V,
           "max_position_embeddings": 32768, "num_experts": 16, "num_experts_per_tok": 2,
           "moe_intermediate_size": 256, "shared_expert_intermediate_size": 256,
           "attn_output_gate": True, "mamba_ssm_dtype": "float32",
           "layer_types": ["linear_attention"] * 3 + ["full_attention"]
           + ["linear_attention"] * 3 + ["full_attention"], **LIN}
    cfg.update(kw)
    return cfg


def _model(cfg: dict, name: str = "m") -> ModelSpec:
    return ModelSpec.from_hf_config(cfg, name, "test")


@pytest.fixture(scope="module")
def node():
    return load_cluster("h100-sxm-1x8")


# ------------------------------------------------------------------------------ loader
def test_sliding_kinds_and_params_are_those_of_full_attention():
    m = _model(_gptoss_like())
    assert m.layer_kinds == ("sliding", "full") * 4 and m.sliding_window == 128
    assert m.kind_counts() == {"sliding": 4, "full": 4} and m.num_kv_layers == 4
    uniform = _model(_gptoss_like(layer_types=None, sliding_window=None))
    assert uniform.layer_kinds == () and not uniform.is_hybrid
    # a sliding layer has the projections of a full one: same weights, half the KV per token
    assert m.params_total == uniform.params_total and m.params_active == uniform.params_active
    assert m.kv_bytes_per_token() * 2 == uniform.kv_bytes_per_token()


def test_gated_deltanet_layers_and_parameter_count():
    m = _model(_qwen35_like())
    assert m.kind_counts() == {"linear": 6, "full": 2} and m.attn_output_gate
    assert m.state_dtype == "fp32" and m.linear_attn is not None
    kd, vd = 4 * 64, 8 * 128
    conv_dim = 2 * kd + vd
    lin = H * (2 * kd + 2 * vd) + H * 2 * 8 + vd * H + conv_dim * 4 + 2 * 8   # qkvz, ba, out, conv, A/dt
    full = H * (2 * HEADS + 2 * KV) * HD + HEADS * HD * H                     # gated q + k, v; o
    moe = 16 * 3 * H * 256 + 3 * H * 256 + H + H * 16                         # experts, shared + gate, router
    norms_lin, norms_full = 2 * H + 128, 2 * H + 2 * HD
    layers = 6 * (lin + norms_lin) + 2 * (full + norms_full) + L * moe
    assert m.params_total == 2 * V * H + H + layers
    assert sum(sum(m.params_by_component(i).values()) for i in range(L)) == layers
    # KV grows only in the full-attention layers
    assert m.kv_bytes_per_token() == 2 * 2 * KV * HD * 2
    # the recurrent state: heads x d_k x d_v (fp32) + conv window (bf16), split over TP
    assert m.linear_state_bytes(1, 4, 2) == 8 * 64 * 128 * 4 + conv_dim * 3 * 2
    assert m.linear_state_bytes(2, 4, 2) == m.linear_state_bytes(1, 4, 2) / 2


def test_full_attention_interval_without_layer_types():
    cfg = _qwen35_like(layer_types=None, full_attention_interval=4, model_type="qwen3_next",
                       architectures=["Qwen3NextForCausalLM"])
    m = _model(cfg)
    assert m.layer_kinds == ("linear", "linear", "linear", "full") * 2


@pytest.mark.parametrize("drop", ["linear_num_value_heads", "linear_conv_kernel_dim"])
def test_linear_attention_without_its_keys_is_refused(drop):
    cfg = _qwen35_like()
    del cfg[drop]
    with pytest.raises(InputError, match="not supported"):
        _model(cfg)


def test_recurrent_architectures_stay_refused(tmp_path):
    cfg = _qwen35_like(layer_types=["mamba", "attention"] * 4)
    f = tmp_path / "config.json"
    f.write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["models", "show", str(f)])
    assert r.exit_code == 2 and "not supported" in r.output and "mamba" in r.output


# ------------------------------------------------------------------------------ memory
def test_kv_layout_per_engine():
    m = _model(_gptoss_like())
    layers = range(L)
    plb = 2 * KV * HD * 2
    v1 = load_engine("vllm")
    kv, seq, pool = stage_kv_layout(m, layers, 1, "bf16", v1)
    # V1 hybrid manager: the sliding layers keep the window's blocks (+1) per sequence
    assert kv == plb * 4 and pool == 0
    assert seq == plb * 4 * (-(-127 // 16) + 1) * 16
    sg = load_engine("sglang")
    kv, seq, pool = stage_kv_layout(m, layers, 1, "bf16", sg)
    assert kv == plb * (4 + 0.8 * 4) and seq == 0 and pool == 0   # SWA pool = 0.8 x full pool
    old = load_engine("vllm-0.6")
    assert stage_kv_layout(m, layers, 1, "bf16", old)[0] == plb * L  # no window: every token


def test_hybrid_kv_capacity_exceeds_the_uniform_model(node):
    dev = node.pools[0].device
    # (SGLang's SWA pool holds 0.8 x the full pool's tokens: 8 / 7.2 layers' worth)
    for cfg, eng, gain in ((_gptoss_like(), "vllm", 1.9), (_gptoss_like(), "sglang", 1.1),
                           (_qwen35_like(), "vllm", 1.5), (_qwen35_like(), "sglang", 1.5)):
        hyb = _model(cfg)
        uni = _model({k: v for k, v in cfg.items() if k not in ("layer_types", "sliding_window")})
        assert not uni.is_hybrid
        a = replica_memory(hyb, dev, ReplicaConfig(tp=1), load_engine(eng))
        b = replica_memory(uni, dev, ReplicaConfig(tp=1), load_engine(eng))
        assert a.fits and b.fits
        assert a.kv_tokens > gain * b.kv_tokens, (cfg["model_type"], eng)


def test_recurrent_state_reservation_and_running_cap(node):
    dev = node.pools[0].device
    m = _model(_qwen35_like())
    v1 = replica_memory(m, dev, ReplicaConfig(tp=1), load_engine("vllm"))
    # vLLM: bf16 state ('auto'); the attention block grows until one page (one layer) holds a
    # layer's state, so every request holds linear / full layers = 3 blocks (groups of equal size)
    page, plb = m.linear_state_bytes(1, 2, 2), 2 * KV * HD * 2
    assert v1.block_size == 16 * -(-int(page) // (16 * plb)) and v1.block_size > 16
    assert v1.seq_state_blocks == 3 and v1.max_state_seqs is None
    assert v1.kv_tokens % v1.block_size == 0
    sg = replica_memory(m, dev, ReplicaConfig(tp=1), load_engine("sglang"))
    st = sg.stages[0]
    # SGLang: mamba pool / KV pool = 0.9; running requests <= slots // 3; fp32 state (config)
    assert st.state_pool_bytes == pytest.approx(0.9 * st.kv_cache_bytes, rel=1e-6)
    slots = st.state_pool_bytes // (6 * m.linear_state_bytes(1, 4, 2))
    assert sg.max_state_seqs == slots // 3 and sg.seq_state_blocks == 0


def test_admission_holds_the_per_sequence_state(node):
    """With few KV blocks, the state blocks every running sequence holds cap the batch."""
    m = _model(_qwen35_like())
    rng = np.random.default_rng(0)
    req = Requests(np.zeros(40), rng.integers(100, 200, 40), np.full(40, 20))
    plan = Plan(groups=(ReplicaGroup(tp=1, max_model_len=4096, max_num_seqs=64),))
    per_seq = replica_memory(m, node.pools[0].device, ReplicaConfig(tp=1, max_model_len=4096),
                             load_engine("vllm")).seq_state_blocks
    assert per_seq > 0
    blocks = 8 * (per_seq + 14)   # room for ~8 sequences with their state
    res = simulate(m, node, plan, req, num_blocks_override=blocks, debug=True)
    assert res.metrics.num_completed == 40
    assert res.replicas[0].max_kv_blocks_used <= blocks


# ------------------------------------------------------------------------------ cost
def test_window_chunks_bound_the_attended_pairs():
    w = 128
    for q, c in ((100, 0), (128, 0), (1000, 0), (300, 5000)):
        exact = sum(min(c + i + 1, w) for i in range(q))
        pieces = window_chunks([(q, c)], w)
        assert sum(p[0] for p in pieces) == q
        charged = sum(ln * cc + ln * (ln + 1) / 2 for ln, cc in pieces)
        assert exact <= charged <= 1.05 * exact + w


def test_sliding_window_caps_decode_attention(node):
    pool = node.pools[0]
    hyb, uni = _model(_gptoss_like()), _model(_gptoss_like(layer_types=None, sliding_window=None))
    eng = load_engine("vllm")
    ch = IterationCostModel(hyb, pool, ReplicaConfig(tp=1), eng)
    cu = IterationCostModel(uni, pool, ReplicaConfig(tp=1), eng)
    long = np.full(64, 16000)
    a = ch.iteration(long, with_breakdown=True).breakdown["attention"]
    b = cu.iteration(long, with_breakdown=True).breakdown["attention"]
    assert a < 0.6 * b                       # half the layers read 128 keys instead of 16000
    short = np.full(64, 100)                 # inside the window: the same work
    a = ch.iteration(short, with_breakdown=True).breakdown["attention"]
    b = cu.iteration(short, with_breakdown=True).breakdown["attention"]
    assert a == pytest.approx(b, rel=1e-9)
    # iterations are memoised on the windowed context sum too: equal raw sums, but the sliding
    # layers read 228 vs 256 keys, so the two must not share a memo entry (which one is faster at
    # two sequences is latency-bound noise: fewer keys, but a larger per-block share)
    x = ch.iteration(np.array([16000, 100])).time_s
    y = ch.iteration(np.array([8050, 8050])).time_s
    assert x != pytest.approx(y, rel=1e-9)


def test_linear_attention_decode_is_independent_of_context(node):
    pool = node.pools[0]
    m = _model(_qwen35_like())
    c = IterationCostModel(m, pool, ReplicaConfig(tp=1), load_engine("sglang"))
    la = c._linear_attention(64, [])
    assert la == c._linear_attention(64, [])
    assert c._linear_attention(128, [])[3] > la[3]
    # decode streams the fp32 state in and out once per sequence
    assert la[3] >= 2 * 64 * 8 * 64 * 128 * 4
    pre = c._linear_attention(0, [(4096, 0)])
    assert pre[2] > 0 and pre[0] > 0
    t_short = c.iteration(np.full(32, 1000)).time_s
    t_long = c.iteration(np.full(32, 20000)).time_s
    u = IterationCostModel(_model({k: v for k, v in _qwen35_like().items() if k != "layer_types"}),
                           pool, ReplicaConfig(tp=1), load_engine("sglang"))
    assert t_long - t_short < u.iteration(np.full(32, 20000)).time_s - u.iteration(np.full(32, 1000)).time_s


# ------------------------------------------------------------------------------ uniform models
def test_uniform_models_have_no_kinds_and_the_same_summary_keys():
    from apex_opt.specs.model import load_model

    m = load_model("llama-3.1-8b")
    assert m.layer_kinds == () and not m.is_hybrid and m.num_kv_layers == m.num_layers
    s = m.summary()
    assert "layer_kinds" not in s and "linear_attention" not in s
    assert m.kv_bytes_per_token() == m.num_layers * 2 * m.num_kv_heads * m.head_dim * 2
    assert stage_kv_layout(m, range(m.num_layers), 1, "bf16", load_engine("vllm")) == (
        2 * m.num_kv_heads * m.head_dim * 2.0 * m.num_layers, 0.0, 0.0)


def test_hybrid_with_dp_attention_and_pipeline_stages(node):
    """Attention ranks split the sequences (the slowest rank sets the time); pipeline stages with
    different mixes of kinds cost their own layers."""
    pool = node.pools[0]
    m = _model(_qwen35_like())
    eng = load_engine("sglang")
    tp2 = IterationCostModel(m, pool, ReplicaConfig(tp=2), eng)
    dp2 = IterationCostModel(m, pool, ReplicaConfig(tp=2, ep=2, attention_dp=2), eng)
    ctx = np.full(32, 4000)
    assert dp2.iteration(ctx).time_s > 0
    k = dp2._attention_kinds(ctx, [])
    assert set(k) == {"linear", "full"}
    # each rank holds half the sequences on tp/2 GPUs: per-rank linear-state traffic of 16 sequences
    assert k["linear"][3] == pytest.approx(dp2._linear_attention(16, [])[3])
    assert tp2._attention_kinds(ctx, [])["full"][0] > 0
    pp = IterationCostModel(m, pool, ReplicaConfig(tp=1, pp=2), eng)
    assert pp.stage_kinds == [(("full", 1), ("linear", 3))] * 2
    c = pp.iteration(ctx, with_breakdown=True)
    assert len(c.stage_times_s) == 2 and c.stage_times_s[0] > 0
    mem = replica_memory(m, pool.device, ReplicaConfig(tp=2, ep=2, attention_dp=2), eng)
    assert mem.fits and mem.max_state_seqs is not None and mem.max_state_seqs % 2 == 0


# ------------------------------------------------------------------------------ Nemotron-H (Mamba2)
def _nemotron_h_like(**kw) -> dict:
    cfg = {"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
           "hidden_size": H, "num_hidden_layers": 9, "num_attention_heads": HEADS,
           "num_key_value_heads": KV, "head_dim": HD, "intermediate_size": 4096,
           "vocab_size": V, "max_position_embeddings": 8192, "tie_word_embeddings": False,
           "hybrid_override_pattern": "M-MM*-M--", "mamba_num_heads": 32, "mamba_head_dim": 64,
           "ssm_state_size": 128, "n_groups": 4, "conv_kernel": 4, "chunk_size": 128,
           "mlp_hidden_act": "relu2"}
    cfg.update(kw)
    return cfg


def test_nemotron_h_blocks_and_parameter_count():
    m = _model(_nemotron_h_like())
    # M- | M | M | *- | M- | -   (a mixer with the MLP block after it; lone mixers / MLPs)
    assert m.layer_kinds == ("mamba", "mamba", "mamba", "full", "mamba", "none")
    assert m.mlp_free_layers == (1, 2) and m.num_dense_layers == 4 and not m.mlp_gated
    d_inner, conv_dim = 32 * 64, 32 * 64 + 2 * 4 * 128
    mamba = (H * (2 * d_inner + 2 * 4 * 128 + 32) + d_inner * H     # in_proj, out_proj
             + conv_dim * 5 + 3 * 32 + d_inner + H)                 # conv + bias, A/D/dt, norms
    attn = H * (HEADS + 2 * KV) * HD + HEADS * HD * H + H
    mlp = 2 * H * 4096 + H                                          # relu2: up, down (+ its norm)
    blocks = 4 * mamba + attn + 4 * mlp                             # 9 blocks, one norm each
    assert m.params_total == 2 * V * H + H + blocks
    assert m.kv_bytes_per_token() == 1 * 2 * KV * HD * 2
    assert m.mamba_state_bytes(1, 4, 2) == 32 * 64 * 128 * 4 + conv_dim * 3 * 2


def test_nemotron_3_moe_blocks():
    """Nemotron-3 'E' blocks (vLLM nemotron_h.py NemotronHMoE): non-gated relu2 experts, a
    non-gated shared MLP of moe_shared_expert_intermediate_size, sigmoid router; with
    moe_latent_size the routed experts run in the latent width between two replicated
    projections. Grouped like '-' blocks: a mixer with the MoE block after it."""
    kw = dict(hybrid_override_pattern="MEM*E-MEM", n_routed_experts=8, num_experts_per_tok=2,
              moe_intermediate_size=256, n_shared_experts=1, moe_shared_expert_intermediate_size=512)
    m = _model(_nemotron_h_like(**kw))
    # ME | M | *E | - | ME | M  ->  the MoE blocks join the mixer before them; '-' stays alone
    assert m.layer_kinds == ("mamba", "mamba", "full", "none", "mamba", "mamba")
    assert m.mlp_free_layers == (1, 5)
    assert m.moe.moe_layers == (0, 2, 4) and not m.moe.expert_gated and m.moe.latent_size == 0
    assert [(op.name, op.n, op.k) for op in m.expert_linear_ops()] == [("up", 256, H), ("down", H, 256)]
    assert [(op.name, op.n, op.k) for op in m.shared_expert_linear_ops()] == [
        ("shared_up", 512, H), ("shared_down", H, 512)]
    moe_layer = 8 * 2 * H * 256 + 2 * H * 512 + 8 * H          # experts + shared + router
    dense = _model(_nemotron_h_like(hybrid_override_pattern="M-M*--M-M"))
    assert dense.moe is None
    per_mlp = 2 * H * 4096                                     # the dense relu2 MLP it replaces
    assert m.params_total - dense.params_total == 3 * (moe_layer - per_mlp)
    assert m.params_active - dense.params_active == 3 * (2 * 2 * H * 256 + 2 * H * 512 + 8 * H - per_mlp)
    lat = _model(_nemotron_h_like(**kw, moe_latent_size=128))
    assert lat.moe_hidden_size == 128
    assert [(op.name, op.n, op.k) for op in lat.expert_linear_ops()] == [("up", 256, 128), ("down", 128, 256)]
    assert [op.split for op in lat.shared_expert_linear_ops()[:2]] == ["replicated", "replicated"]
    with pytest.raises(InputError, match="n_routed_experts"):
        _model(_nemotron_h_like(hybrid_override_pattern="MEM*E-MEM"))
    with pytest.raises(InputError, match="hybrid_override_pattern"):
        _model(_nemotron_h_like(num_hidden_layers=10))


def test_state_dtype_each_engine_takes():
    """vLLM keeps 'auto' (the model dtype) for Gated DeltaNet state whatever the config says,
    but its NemotronH config hook takes the config's mamba_ssm_cache_dtype (float32 when
    absent); SGLang reads the config's for both."""
    from apex_opt.memory import recurrent_state_dtype

    v1, sg = load_engine("vllm"), load_engine("sglang")
    qwen = _model(_qwen35_like())                       # mamba_ssm_dtype float32
    assert (recurrent_state_dtype(qwen, v1), recurrent_state_dtype(qwen, sg)) == ("bf16", "fp32")
    nh = _model(_nemotron_h_like(mamba_ssm_cache_dtype="bfloat16"))
    assert (recurrent_state_dtype(nh, v1), recurrent_state_dtype(nh, sg)) == ("bf16", "bf16")
    assert recurrent_state_dtype(_model(_nemotron_h_like()), v1) == "fp32"


def test_nemotron_h_pipeline_split_counts_the_configs_blocks(node):
    """Engines split num_hidden_layers blocks over the stages (a mixer and its MLP are two);
    a grouped layer goes to the stage of its first block, and the launch partition is spelled
    in blocks (vLLM refuses a VLLM_PP_LAYER_PARTITION that does not sum to num_hidden_layers)."""
    from apex_opt.parallel import default_layers_per_stage, stage_blocks
    from apex_opt.report.launch import launch_plan

    m = _model(_nemotron_h_like())          # M- | M | M | *- | M- | -   (9 blocks, 6 layers)
    assert m.layer_blocks == (2, 1, 1, 2, 2, 1) and sum(m.layer_blocks) == 9
    # vLLM: blocks [5, 4] -> layers starting at blocks 0, 2, 3, 4 | 6, 8
    assert default_layers_per_stage(m, 2, load_engine("vllm")) == (4, 2)
    # SGLang: blocks [4, 5] -> 0, 2, 3 | 4, 6, 8
    assert default_layers_per_stage(m, 2, load_engine("sglang")) == (3, 3)
    assert stage_blocks(m, (4, 2)) == (6, 3)
    from apex_opt.parallel import stage_layer_ranges
    with pytest.raises(ValueError, match="6 modelled layers .* config's 9 hidden layers"):
        stage_layer_ranges(m, ReplicaConfig(tp=1, pp=2, layers_per_stage=(5, 4)))
    mem = replica_memory(m, node.pools[0].device, ReplicaConfig(tp=1, pp=2), load_engine("vllm"))
    assert [s.layers for s in mem.stages] == [4, 2]
    plan = Plan(groups=(ReplicaGroup(tp=1, pp=2, layers_per_stage=(3, 3)),))
    for eng, var in (("vllm", "VLLM_PP_LAYER_PARTITION"), ("sglang", "SGLANG_PP_LAYER_PARTITION")):
        lp = launch_plan("/tmp/nemotron-h", m, plan, engine=eng, cluster=node)
        assert {p.env.get(var) for p in lp.processes if p.role == "server"} == {"4,5"}


def test_nemotron_h_memory_and_cost(node):
    pool = node.pools[0]
    m = _model(_nemotron_h_like())
    v1 = replica_memory(m, pool.device, ReplicaConfig(tp=1), load_engine("vllm"))
    plb = 2 * KV * HD * 2                    # vLLM's NemotronH hook: an fp32 SSM state
    assert v1.block_size == 16 * -(-int(m.mamba_state_bytes(1, 4, 2)) // (16 * plb))
    assert v1.seq_state_blocks == 4          # 4 Mamba2 layers per full-attention layer
    sg = replica_memory(m, pool.device, ReplicaConfig(tp=1), load_engine("sglang"))
    assert sg.max_state_seqs == int(sg.stages[0].state_pool_bytes // (4 * m.mamba_state_bytes(1, 4, 2))) // 3
    c = IterationCostModel(m, pool, ReplicaConfig(tp=1), load_engine("vllm"))
    assert dict(c.stage_kinds[0]) == {"mamba": 4, "full": 1, "none": 1}
    assert c.stage_blocks == [9]             # 9 norms and (TP) all-reduces, one per block
    mix = c._mamba_mixer(64, [])
    assert mix[3] >= 2 * 64 * 32 * 64 * 128 * 4                    # the fp32 state in and out
    t1 = c.iteration(np.full(64, 1000)).time_s
    t2 = c.iteration(np.full(64, 8000)).time_s
    assert 0 < t1 < t2
    assert c.iteration(np.zeros(0, dtype=np.int64), [(2048, 0)]).time_s > 0
