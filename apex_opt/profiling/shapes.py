"""What `apex-opt profile` measures: operator shapes generated from model dimensions.

Nothing here imports torch. The full plan reproduces the shape set of the bundled H100 profile
(apex_opt/data/profiles/h100-sxm-80gb): GEMM (n, k) pairs are the projections of a small table
of models at TP 1/2/4/8 plus a 3x3 grid, generated from the model dimensions below (not read from
the bundled CSV). The quick plan is the same structure at toy sizes so that it runs on a laptop
CPU in seconds and still produces every table the cost model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024 ** 3
MIB = 1024 ** 2


@dataclass(frozen=True)
class AttnDims:
    """Dense transformer block dimensions (grouped-query attention + gated MLP)."""

    name: str
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int | None  # dense MLP width; None for MoE models (experts listed separately)


@dataclass(frozen=True)
class ExpertDims:
    """One MoE expert's gated MLP: gate_up is [2*intermediate, hidden], down [hidden, intermediate]."""

    name: str
    hidden: int
    intermediate: int
    local_expert_counts: tuple[int, ...]  # experts per GPU measured as one grouped GEMM


@dataclass(frozen=True)
class MLADims:
    """DeepSeek multi-head latent attention projections."""

    name: str
    hidden: int
    heads: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class GemmShape:
    """y[m, n] = x[m, k] . W[n, k]^T for every m of the plan; ``tag`` says where (n, k) comes from."""

    n: int
    k: int
    tag: str


@dataclass(frozen=True)
class GroupedCase:
    """MoE gate/up projection over ``experts`` local experts, equal tokens per expert."""

    model: str
    experts: int
    tokens_per_expert: int
    k: int
    n: int


@dataclass(frozen=True)
class AttnCase:
    """One attention call; heads are per GPU (after TP)."""

    phase: str  # prefill | decode | chunked_prefill
    batch: int
    q_heads: int
    kv_heads: int
    head_dim: int
    q_len: int
    kv_len: int


@dataclass(frozen=True)
class ElementwiseCase:
    op: str  # rmsnorm | silu_mul | residual_add
    tokens: int
    hidden: int


@dataclass(frozen=True)
class PowerCase:
    """A kernel run back-to-back while the NVML energy counter is read."""

    case: str
    kind: str  # gemm | decode_attn | d2d_copy | idle
    dtype: str = "bf16"
    m: int = 0
    n: int = 0
    k: int = 0
    batch: int = 0
    q_heads: int = 0
    kv_heads: int = 0
    kv_len: int = 0
    head_dim: int = 128
    nbytes: int = 0
    rest_s: float = 0.0  # idle only: seconds of rest before measuring


TP_DEGREES_DEFAULT = (1, 2, 4, 8)


@dataclass(frozen=True)
class ProfilePlan:
    """Everything one profile run measures."""

    gemm_m: tuple[int, ...]
    gemm_shapes: tuple[GemmShape, ...]
    grouped: tuple[GroupedCase, ...]
    attention: tuple[AttnCase, ...]
    chunked: tuple[AttnCase, ...]
    elementwise: tuple[ElementwiseCase, ...]
    copy_mib: tuple[int, ...]
    power_curve: tuple[PowerCase, ...] = ()
    energy: tuple[PowerCase, ...] = ()
    power_curve_s: float = 1.5
    energy_s: float = 2.5
    decode_kv_cap_bytes: int = 8 * GIB
    prefill_token_cap: int = 65536
    models: tuple[str, ...] = field(default_factory=tuple)
    tp_degrees: tuple[int, ...] = TP_DEGREES_DEFAULT
    grid: tuple[int, ...] = ()


# --- model table (public config.json values) -----------------------------------------------------

DENSE: tuple[AttnDims, ...] = (
    AttnDims("llama3-8b", 4096, 32, 8, 128, 14336),
    AttnDims("llama3-70b", 8192, 64, 8, 128, 28672),
    AttnDims("llama3-405b", 16384, 128, 8, 128, 53248),
    AttnDims("qwen2.5-32b", 5120, 40, 8, 128, 27648),
    AttnDims("mistral-large-2407", 12288, 96, 8, 128, 28672),
    AttnDims("mixtral-8x7b", 4096, 32, 8, 128, None),
    AttnDims("mixtral-8x22b", 6144, 48, 8, 128, None),
)
EXPERTS: tuple[ExpertDims, ...] = (
    ExpertDims("mixtral-8x7b", 4096, 14336, (8,)),
    ExpertDims("mixtral-8x22b", 6144, 16384, ()),
    ExpertDims("qwen3-235b", 4096, 1536, (8, 32, 256)),
    ExpertDims("deepseek-v3", 7168, 2048, (8, 32, 256)),
)
MLA: tuple[MLADims, ...] = (MLADims("deepseek-v3", 7168, 128, 1536, 512, 128, 64, 128),)
TP_DEGREES = TP_DEGREES_DEFAULT
MLA_TP_DEGREES = (1, 8)
GRID = (1024, 4096, 16384)
GEMM_M = tuple(2 ** i for i in range(15))  # 1 ... 16384 tokens

# Per-GPU attention head layouts (q_heads, kv_heads) seen at TP 1..8 of the models above.
ATTN_HEADS = ((4, 1), (8, 1), (8, 2), (16, 1), (16, 2), (16, 4), (32, 2), (32, 4), (32, 8),
              (64, 4), (64, 8), (128, 8))
CHUNK_HEADS = ((8, 1), (16, 2), (32, 4), (32, 8), (64, 8))


def attention_projections(d: AttnDims, tp: int) -> list[GemmShape]:
    """qkv, o (and gate_up, down for dense models) of one GPU at tensor parallel degree ``tp``.
    KV heads are replicated when tp exceeds their number (vLLM behaviour)."""
    q = d.heads // tp
    kv = max(1, d.kv_heads // tp)
    out = [GemmShape((q + 2 * kv) * d.head_dim, d.hidden, f"{d.name}/tp{tp}/qkv"),
           GemmShape(d.hidden, q * d.head_dim, f"{d.name}/tp{tp}/o")]
    if d.intermediate is not None:
        out += [GemmShape(2 * d.intermediate // tp, d.hidden, f"{d.name}/tp{tp}/gate_up"),
                GemmShape(d.hidden, d.intermediate // tp, f"{d.name}/tp{tp}/down")]
    return out


def expert_projections(e: ExpertDims, tp: int) -> list[GemmShape]:
    """One expert's gate_up and down, each sharded over ``tp`` GPUs."""
    tag = f"{e.name}-expert/tp{tp}"
    return [GemmShape(2 * e.intermediate // tp, e.hidden, f"{tag}/gate_up"),
            GemmShape(e.hidden, e.intermediate // tp, f"{tag}/down")]


def mla_projections(m: MLADims, tp: int) -> list[GemmShape]:
    """MLA: q_a / kv_a are replicated, q_b / kv_b / o are head-sharded."""
    h = m.heads // tp
    tag = f"{m.name}/tp{tp}"
    return [GemmShape(m.q_lora_rank, m.hidden, f"{tag}/q_a"),
            GemmShape(h * (m.qk_nope_dim + m.qk_rope_dim), m.q_lora_rank, f"{tag}/q_b"),
            GemmShape(m.kv_lora_rank + m.qk_rope_dim, m.hidden, f"{tag}/kv_a"),
            GemmShape(h * (m.qk_nope_dim + m.v_head_dim), m.kv_lora_rank, f"{tag}/kv_b"),
            GemmShape(m.hidden, h * m.v_head_dim, f"{tag}/o")]


def dedup(shapes: list[GemmShape]) -> tuple[GemmShape, ...]:
    """Keep the first tag of each (n, k) pair."""
    seen: set[tuple[int, int]] = set()
    out = []
    for s in shapes:
        if (s.n, s.k) not in seen:
            seen.add((s.n, s.k))
            out.append(s)
    return tuple(out)


def gemm_shapes(dense=DENSE, experts=EXPERTS, mla=MLA, tps=TP_DEGREES, grid=GRID,
                mla_tps=MLA_TP_DEGREES) -> tuple[GemmShape, ...]:
    """Unique (n, k) of every projection at every TP degree, plus the n x k grid."""
    shapes: list[GemmShape] = []
    for d in dense:
        for tp in tps:
            shapes += attention_projections(d, tp)
    shapes += [GemmShape(n, k, "grid") for n in grid for k in grid]
    for e in experts:
        for tp in tps:
            shapes += expert_projections(e, tp)
    for m in mla:
        for tp in mla_tps:
            shapes += mla_projections(m, tp)
    return dedup(shapes)


def grouped_cases(experts=EXPERTS, tokens=(1, 4, 16, 64, 256, 1024)) -> tuple[GroupedCase, ...]:
    return tuple(GroupedCase(e.name, n_exp, t, e.hidden, 2 * e.intermediate)
                 for e in experts for n_exp in e.local_expert_counts for t in tokens)


def kv_bytes(batch: int, kv_heads: int, kv_len: int, head_dim: int, elem_bytes: int = 2) -> int:
    """Bytes of K and V for one attention call."""
    return 2 * batch * kv_heads * kv_len * head_dim * elem_bytes


def attention_cases(heads=ATTN_HEADS, head_dim=128, prefill_batches=(1, 4),
                    prefill_lens=tuple(128 * 2 ** i for i in range(9)),
                    decode_batches=(1, 4, 16, 64, 256),
                    decode_lens=(128, 512, 2048, 8192, 32768, 131072),
                    prefill_token_cap=65536, kv_cap=8 * GIB) -> tuple[AttnCase, ...]:
    """Causal prefill (q_len = kv_len, at most ``prefill_token_cap`` tokens per call) and decode
    (one query per sequence, at most ``kv_cap`` bytes of bf16 K+V)."""
    out: list[AttnCase] = []
    for hq, hkv in heads:
        for length in prefill_lens:
            for b in prefill_batches:
                if b * length <= prefill_token_cap:
                    out.append(AttnCase("prefill", b, hq, hkv, head_dim, length, length))
    for hq, hkv in heads:
        for length in decode_lens:
            for b in decode_batches:
                if kv_bytes(b, hkv, length, head_dim) <= kv_cap:
                    out.append(AttnCase("decode", b, hq, hkv, head_dim, 1, length))
    return tuple(out)


def chunked_cases(heads=CHUNK_HEADS, head_dim=128, q_lens=(128, 256, 512, 1024, 2048),
                  kv_lens=(1024, 4096, 16384, 65536)) -> tuple[AttnCase, ...]:
    """q_len new tokens against kv_len tokens (cached + new), q_len <= kv_len, batch 1."""
    return tuple(AttnCase("chunked_prefill", 1, hq, hkv, head_dim, q, kv)
                 for hq, hkv in heads for q in q_lens for kv in kv_lens if q <= kv)


def elementwise_cases(tokens=GEMM_M, hiddens=(4096, 8192)) -> tuple[ElementwiseCase, ...]:
    return tuple(ElementwiseCase(op, t, h) for h in hiddens for t in tokens
                 for op in ("rmsnorm", "silu_mul", "residual_add"))


def power_cases() -> tuple[tuple[PowerCase, ...], tuple[PowerCase, ...]]:
    """(power_curve, energy) cases of the full profile."""
    curve = [PowerCase(f"gemm_bf16_m{m}_n28672_k8192", "gemm", m=m, n=28672, k=8192)
             for m in (2 ** i for i in range(14))]
    curve += [PowerCase(f"decode_attn_b{b}_L4096_h64kv8", "decode_attn", batch=b, q_heads=64,
                        kv_heads=8, kv_len=4096) for b in (1, 8, 32, 128)]
    curve.append(PowerCase("idle_after_8s", "idle", rest_s=8.0))
    energy = [PowerCase("idle", "idle")]
    energy += [PowerCase(f"gemm_bf16_m{m}_n8192_k8192", "gemm", m=m, n=8192, k=8192)
               for m in (1, 16, 128, 1024, 8192)]
    energy.append(PowerCase("gemm_fp8_m8192_n8192_k8192", "gemm", dtype="fp8", m=8192, n=8192,
                            k=8192))
    energy.append(PowerCase("decode_attn_b64_L8192", "decode_attn", batch=64, q_heads=64,
                            kv_heads=8, kv_len=8192))
    energy.append(PowerCase("d2d_copy_2GiB", "d2d_copy", nbytes=2 * GIB))
    return tuple(curve), tuple(energy)


def full_plan() -> ProfilePlan:
    """The plan behind the bundled H100 profile."""
    curve, energy = power_cases()
    return ProfilePlan(
        gemm_m=GEMM_M, gemm_shapes=gemm_shapes(), grouped=grouped_cases(),
        attention=attention_cases(), chunked=chunked_cases(), elementwise=elementwise_cases(),
        copy_mib=(64, 512, 2048), power_curve=curve, energy=energy,
        models=tuple(sorted({d.name for d in DENSE} | {e.name for e in EXPERTS}
                            | {m.name for m in MLA})),
        tp_degrees=TP_DEGREES, grid=GRID)


# Toy dimensions of the quick plan: same code paths, seconds on a CPU.
QUICK_DENSE = (AttnDims("tiny", 512, 8, 2, 64, 1024),)
QUICK_EXPERTS = (ExpertDims("tiny-moe", 256, 256, (4,)),)


def quick_plan() -> ProfilePlan:
    """Tiny sizes, few shapes; power tables are not measured."""
    tps, grid = (1, 2), (256, 1024)
    shapes = gemm_shapes(dense=QUICK_DENSE, experts=QUICK_EXPERTS, mla=(), tps=tps, grid=grid)
    return ProfilePlan(
        gemm_m=(1, 8, 64), gemm_shapes=shapes,
        grouped=grouped_cases(QUICK_EXPERTS, tokens=(1, 16)),
        attention=attention_cases(heads=((8, 2),), head_dim=64, prefill_batches=(1, 2),
                                  prefill_lens=(64, 256), decode_batches=(1, 4),
                                  decode_lens=(128, 1024)),
        chunked=chunked_cases(heads=((8, 2),), head_dim=64, q_lens=(32, 128), kv_lens=(256, 1024)),
        elementwise=elementwise_cases(tokens=(1, 16, 256), hiddens=(512,)),
        copy_mib=(1, 8),
        models=("tiny", "tiny-moe"), tp_degrees=tps, grid=grid)
