"""Candidate replica shapes (TP × PP × EP) of a model on a device pool.

Rules: TP stays inside one node (it all-reduces twice per layer) and divides the attention heads;
KV heads either split evenly over TP or are replicated (TP a multiple of the KV heads); EP divides
TP and the number of routed experts; PP spans nodes, at most one stage per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from .specs.cluster import PoolSpec
from .specs.model import ModelSpec


@dataclass(frozen=True)
class Shape:
    pool: str
    tp: int
    pp: int
    ep: int

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


def valid_tp(model: ModelSpec, tp: int) -> bool:
    if model.num_attention_heads % tp:
        return False
    if model.attention == "gqa":
        kv = model.num_kv_heads
        if kv % tp and tp % kv:
            return False
    return True


def valid_ep(model: ModelSpec, tp: int, ep: int) -> bool:
    if tp % ep:
        return False
    if ep == 1:
        return True
    return model.moe is not None and model.moe.num_experts % ep == 0


def tp_degrees(model: ModelSpec, pool: PoolSpec) -> list[int]:
    return [t for t in range(1, pool.gpus_per_node + 1)
            if pool.gpus_per_node % t == 0 and valid_tp(model, t)]


def enumerate_shapes(model: ModelSpec, pool: PoolSpec, max_gpus: int | None = None,
                     max_pp: int = 64) -> list[Shape]:
    """All valid shapes of one replica on ``pool`` (at most ``max_gpus`` GPUs)."""
    limit = min(pool.num_gpus, max_gpus or pool.num_gpus)
    out = []
    for tp in tp_degrees(model, pool):
        for pp in range(1, min(max_pp, model.num_layers, limit // tp) + 1):
            eps = [e for e in range(1, tp + 1) if valid_ep(model, tp, e)] if model.moe else [1]
            for ep in eps:
                out.append(Shape(pool.name, tp, pp, ep))
    return out


def shape_problem(model: ModelSpec, pool: PoolSpec, tp: int, pp: int, ep: int) -> str | None:
    """Why a TP/PP/EP shape cannot run ``model`` on ``pool`` (the engine would refuse it), or None."""
    if model.num_attention_heads % tp:
        return (f"tp={tp} does not divide the {model.num_attention_heads} attention heads of "
                f"{model.name}; use one of {tp_degrees(model, pool) or [1]}")
    if model.attention == "gqa" and model.num_kv_heads % tp and tp % model.num_kv_heads:
        return (f"tp={tp} neither divides nor is a multiple of the {model.num_kv_heads} KV heads "
                f"of {model.name}")
    if tp > pool.gpus_per_node:
        return (f"tp={tp} exceeds the {pool.gpus_per_node} GPUs of one node of pool "
                f"'{pool.name}'; tensor parallelism stays inside a node (use --pp across nodes)")
    if ep > 1 and model.moe is None:
        return f"ep={ep} needs a mixture-of-experts model; {model.name} is dense"
    if not valid_ep(model, tp, ep):
        return f"ep={ep} must divide tp={tp} and the {model.moe.num_experts} experts of {model.name}"
    if pp > model.num_layers:
        return f"pp={pp} exceeds the {model.num_layers} layers of {model.name}"
    return None
