"""DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5): the indexer's fp8 key cache (index_head_dim
bytes + one fp32 scale per 128) sits next to the MLA latent in every layer, on every TP rank."""

from __future__ import annotations

import pytest

from apex_opt.memory import dsa_index_bytes_per_token, kv_bytes_per_token_per_layer
from apex_opt.specs.model import ModelSpec

_DS = {"architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
       "hidden_size": 7168, "num_hidden_layers": 4, "num_attention_heads": 128,
       "num_key_value_heads": 128, "vocab_size": 129280, "max_position_embeddings": 163840,
       "intermediate_size": 18432, "q_lora_rank": 1536, "kv_lora_rank": 512,
       "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}


def test_sparse_attention_index_keys_add_132_bytes_per_token_and_layer():
    plain = ModelSpec.from_hf_config(_DS)
    dsa = ModelSpec.from_hf_config({**_DS, "index_n_heads": 64, "index_head_dim": 128,
                                    "index_topk": 2048})
    assert dsa_index_bytes_per_token(plain) == 0 and dsa_index_bytes_per_token(dsa) == 132
    for kv, tp in (("bf16", 8), ("fp8", 4)):
        extra = kv_bytes_per_token_per_layer(dsa, tp, kv) - kv_bytes_per_token_per_layer(plain, tp, kv)
        assert extra == pytest.approx(132.0)   # not split over TP, not in the KV dtype
    # bf16 latent + rope key: (512 + 64) x 2 = 1152 B; the index keys are ~11 % more
    assert kv_bytes_per_token_per_layer(dsa, 8, "bf16") == pytest.approx(1152 + 132)
