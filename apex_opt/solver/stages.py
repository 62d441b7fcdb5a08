"""Uneven layer-to-stage splits for pipeline parallelism (exact dynamic programming).

Every stage runs a contiguous block of decoder layers; stage 0 also holds the embedding and the last
stage the final norm and the LM head. The split minimises the slowest stage's per-step work (what
bounds pipeline throughput), then, among the splits that reach that optimum, the heaviest stage's
weights (what bounds the KV cache, since every stage gets the same number of blocks).

Per-layer work is the bytes of weights one decode step reads (decode is weight-bandwidth bound): the
attention projections plus the dense MLP, or for an MoE layer the shared experts, the router and the
routed experts a batch of ``NOMINAL_BATCH`` sequences touches in expectation. The LM head is read in
full every step. Both quantities are in parameters (the dtype scales every stage alike, except the
bf16 embedding / LM head, which is accounted separately).
"""

from __future__ import annotations

from functools import lru_cache

from ..specs.model import ModelSpec

#: Decode batch used to estimate how many routed experts a step touches.
NOMINAL_BATCH = 64


def _layer_costs(model: ModelSpec, weight_bytes: float) -> tuple[list[float], list[float]]:
    """(work, weight bytes) of every decoder layer for ``weight_bytes`` per linear parameter."""
    work, mem = [], []
    for i in range(model.num_layers):
        c = model.params_by_component(i)
        linear = c["attention"] + c["mlp"] + c["shared_experts"]
        touched = 0.0
        if c["experts"]:
            assert model.moe is not None
            e, k = model.moe.num_experts, model.moe.experts_per_token
            frac = 1.0 - (1.0 - 1.0 / e) ** (NOMINAL_BATCH * k)
            touched = c["experts"] * frac
        small = 2.0 * (c["router"] + c["norms"])
        work.append((linear + touched) * weight_bytes + small)
        mem.append((linear + c["experts"]) * weight_bytes + small)
    return work, mem


def _partition(costs: list[float], extras: tuple[float, float], parts: int,
               cap: tuple[list[float], tuple[float, float], float] | None = None
               ) -> tuple[float, list[int]] | None:
    """Contiguous split of ``costs`` into ``parts`` non-empty blocks minimising the largest block,
    where ``extras = (first, last)`` is added to block 0 / the last block. With ``cap =
    (cap_costs, cap_extras, limit)`` only blocks whose cap-cost sum (plus its extras) stays within
    ``limit`` are allowed. Returns (largest block, block sizes) or None when no split satisfies
    the cap."""
    n = len(costs)

    def prefix(v: list[float]) -> list[float]:
        out = [0.0]
        for c in v:
            out.append(out[-1] + c)
        return out

    pc = prefix(costs)
    pcap = prefix(cap[0]) if cap is not None else None
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    arg = [[-1] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for j in range(1, parts + 1):
        last = j == parts
        for i in range(j, n - (parts - j) + 1):
            if last and i != n:
                continue
            for s in range(j - 1, i):
                prev = best[j - 1][s]
                if prev == inf:
                    continue
                block = pc[i] - pc[s] + (extras[0] if j == 1 else 0.0) + (extras[1] if last else 0.0)
                if cap is not None and pcap is not None:
                    ce = cap[1]
                    used = pcap[i] - pcap[s] + (ce[0] if j == 1 else 0.0) + (ce[1] if last else 0.0)
                    if used > cap[2] * (1 + 1e-12):
                        continue
                v = max(prev, block)
                if v < best[j][i]:
                    best[j][i] = v
                    arg[j][i] = s
    if best[parts][n] == inf:
        return None
    sizes, i = [], n
    for j in range(parts, 0, -1):
        s = arg[j][i]
        sizes.append(i - s)
        i = s
    return best[parts][n], sizes[::-1]


@lru_cache(maxsize=4096)
def _split_cached(model: ModelSpec, pp: int, weight_bytes: float) -> tuple[int, ...]:
    work, mem = _layer_costs(model, weight_bytes)
    emb = 2.0 * model.embedding_params
    head = 2.0 * model.vocab_size * model.hidden_size
    # stage 0 reads only the embedding rows of its tokens (negligible work), the last stage reads
    # the whole LM head every step; memory holds both in full.
    work_extras = (0.0, head)
    first = _partition(work, work_extras, pp)
    assert first is not None
    second = _partition(mem, (emb, head), pp, cap=(work, work_extras, first[0]))
    return tuple((second or first)[1])


def split_layers(model: ModelSpec, pp: int, weight_dtype_bytes: float = 2.0) -> tuple[int, ...]:
    """Layers per stage for ``pp`` stages (a tuple of ``pp`` positive ints summing to the layers).

    ``pp == 1`` returns all layers. Raises ValueError when ``pp`` exceeds the layer count.
    """
    if pp < 1 or pp > model.num_layers:
        raise ValueError(f"pp={pp} must be between 1 and the model's {model.num_layers} layers")
    if pp == 1:
        return (model.num_layers,)
    return _split_cached(model, pp, float(weight_dtype_bytes))


def stage_work(model: ModelSpec, split: tuple[int, ...], weight_dtype_bytes: float = 2.0) -> list[float]:
    """Per-stage decode work (bytes read per step) of ``split`` -- for tests and reports."""
    work, _ = _layer_costs(model, weight_dtype_bytes)
    head = 2.0 * model.vocab_size * model.hidden_size
    out, start = [], 0
    for s, n in enumerate(split):
        w = sum(work[start:start + n])
        if s == len(split) - 1:
            w += head
        out.append(w)
        start += n
    return out
