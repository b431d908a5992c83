"""The shapes of every released checkpoint the configs name, as their config.json files give them (no download).

Memory estimates and real-size benchmarks build random-initialised networks from these: what matters is each
field that sizes a tensor (widths, layers, heads, vocabulary). A config.json of your own overrides them
(`tools/estimate_memory.py --model-config`, or a local `model_path` folder).
"""
from typing import Any, Dict, NamedTuple


class ReleasedShape(NamedTuple):
    """A released model: its LLM family, ViT style and the config.json fields that differ from the tiny ones."""
    llm: str
    vit: str
    vision_config: Dict[str, Any]
    llm_config: Dict[str, Any]


VIT_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                drop_path_rate=0.1)
VIT_6B = dict(hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
              drop_path_rate=0.1)
_LONG_CONTEXT = dict(max_position_embeddings=32768)
_INTERNLM2 = dict(vocab_size=92553, **_LONG_CONTEXT)
_QWEN2_5 = dict(vocab_size=151674, **_LONG_CONTEXT)
_QWEN3 = dict(vocab_size=151936, head_dim=128, num_key_value_heads=8, **_LONG_CONTEXT)


def _llm(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, **fields: Any) -> Dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, intermediate_size=intermediate, **fields)


INTERNLM2_1_8B = _llm(2048, 24, 16, 8, 8192, **_INTERNLM2)
INTERNLM2_7B = _llm(4096, 32, 32, 8, 14336, **_INTERNLM2)
INTERNLM2_20B = _llm(6144, 48, 48, 8, 16384, **_INTERNLM2)
# Phi-3-mini-128k's long-context rope: one factor per rotary frequency (head_dim / 2 = 48 of them).
PHI3_MINI = _llm(3072, 32, 32, 32, 8192, vocab_size=32020, max_position_embeddings=131072,
                 rope_scaling=dict(type='su', short_factor=[1.0] * 48, long_factor=[1.0] * 48))
YI_34B = _llm(7168, 60, 56, 8, 20480, vocab_size=64000, max_position_embeddings=4096)
LLAMA3_70B = _llm(8192, 80, 64, 8, 28672, vocab_size=128265, max_position_embeddings=8192)
QWEN2_0_5B = _llm(896, 24, 14, 2, 4864, vocab_size=151655, **_LONG_CONTEXT)
QWEN2_5_0_5B = _llm(896, 24, 14, 2, 4864, **_QWEN2_5)
QWEN2_5_1_5B = _llm(1536, 28, 12, 2, 8960, **_QWEN2_5)
QWEN2_5_3B = _llm(2048, 36, 16, 2, 11008, **_QWEN2_5)
QWEN2_5_7B = _llm(3584, 28, 28, 4, 18944, **_QWEN2_5)
QWEN2_5_14B = _llm(5120, 48, 40, 8, 13824, **_QWEN2_5)
QWEN2_5_32B = _llm(5120, 64, 40, 8, 27648, **_QWEN2_5)
QWEN2_5_72B = _llm(8192, 80, 64, 8, 29568, **_QWEN2_5)


def _qwen3(hidden: int, layers: int, heads: int, intermediate: int) -> Dict[str, Any]:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=intermediate, **_QWEN3)


# InternLM3-8B (InternVL3-9B ships it as an InternLM2 model): GQA with 2 KV heads, a 128k vocabulary.
INTERNLM3_8B = _llm(4096, 48, 32, 2, 10240, vocab_size=128512, **_LONG_CONTEXT)


def _qwen3_moe(hidden: int, layers: int, heads: int, intermediate: int, expert_intermediate: int) -> Dict[str, Any]:
    """Qwen3-MoE: 128 experts, 8 active per token, in every layer."""
    return dict(_qwen3(hidden, layers, heads, intermediate), num_key_value_heads=4,
                moe_intermediate_size=expert_intermediate, num_experts=128, num_experts_per_tok=8)


QWEN3_30B_A3B = _qwen3_moe(2048, 48, 32, 6144, 768)
QWEN3_235B_A22B = _qwen3_moe(4096, 94, 64, 12288, 1536)
# gpt-oss-20b: 32 experts, 4 active; sliding-window (128) and full attention layers in turn.
GPT_OSS_20B = dict(_llm(2880, 24, 64, 8, 2880, vocab_size=201088, max_position_embeddings=131072), head_dim=64,
                   num_local_experts=32, num_experts_per_tok=4, experts_per_token=4, sliding_window=128,
                   layer_types=['sliding_attention', 'full_attention'] * 12)


RELEASED: Dict[str, ReleasedShape] = {
    'OpenGVLab/Mini-InternVL-Chat-2B-V1-5': ReleasedShape('internlm2', '300m', VIT_300M, INTERNLM2_1_8B),
    'OpenGVLab/Mini-InternVL-Chat-4B-V1-5': ReleasedShape('phi3', '300m', VIT_300M, PHI3_MINI),
    'OpenGVLab/InternVL-Chat-V1-5': ReleasedShape('internlm2', '6b', VIT_6B, INTERNLM2_20B),
    'OpenGVLab/InternVL2-1B': ReleasedShape('qwen2', '300m', VIT_300M, QWEN2_0_5B),
    'OpenGVLab/InternVL2-2B': ReleasedShape('internlm2', '300m', VIT_300M, INTERNLM2_1_8B),
    'OpenGVLab/InternVL2-4B': ReleasedShape('phi3', '300m', VIT_300M, PHI3_MINI),
    'OpenGVLab/InternVL2-8B': ReleasedShape('internlm2', '300m', VIT_300M, INTERNLM2_7B),
    'OpenGVLab/InternVL2-26B': ReleasedShape('internlm2', '6b', VIT_6B, INTERNLM2_20B),
    'OpenGVLab/InternVL2-40B': ReleasedShape('llama', '6b', VIT_6B, YI_34B),
    'OpenGVLab/InternVL2-Llama3-76B': ReleasedShape('llama', '6b', VIT_6B, LLAMA3_70B),
    'OpenGVLab/InternVL2_5-1B': ReleasedShape('qwen2', '300m', VIT_300M, QWEN2_5_0_5B),
    'OpenGVLab/InternVL2_5-2B': ReleasedShape('internlm2', '300m', VIT_300M, INTERNLM2_1_8B),
    'OpenGVLab/InternVL2_5-4B': ReleasedShape('qwen2', '300m', VIT_300M, QWEN2_5_3B),
    'OpenGVLab/InternVL2_5-8B': ReleasedShape('internlm2', '300m', VIT_300M, INTERNLM2_7B),
    'OpenGVLab/InternVL2_5-26B': ReleasedShape('internlm2', '6b', VIT_6B, INTERNLM2_20B),
    'OpenGVLab/InternVL2_5-38B': ReleasedShape('qwen2', '6b', VIT_6B, QWEN2_5_32B),
    'OpenGVLab/InternVL2_5-78B': ReleasedShape('qwen2', '6b', VIT_6B, QWEN2_5_72B),
    'OpenGVLab/InternVL3-1B': ReleasedShape('qwen2', '300m', VIT_300M, QWEN2_5_0_5B),
    'OpenGVLab/InternVL3-2B': ReleasedShape('qwen2', '300m', VIT_300M, QWEN2_5_1_5B),
    'OpenGVLab/InternVL3-8B': ReleasedShape('qwen2', '300m', VIT_300M, QWEN2_5_7B),
    'OpenGVLab/InternVL3-9B': ReleasedShape('internlm2', '300m', VIT_300M, INTERNLM3_8B),
    'OpenGVLab/InternVL3-14B': ReleasedShape('qwen2', '300m', VIT_300M, QWEN2_5_14B),
    'OpenGVLab/InternVL3-38B': ReleasedShape('qwen2', '6b', VIT_6B, QWEN2_5_32B),
    'OpenGVLab/InternVL3-78B': ReleasedShape('qwen2', '6b', VIT_6B, QWEN2_5_72B),
    'OpenGVLab/InternVL3_5-1B': ReleasedShape('qwen3', '300m', VIT_300M, _qwen3(1024, 28, 16, 3072)),
    'OpenGVLab/InternVL3_5-2B': ReleasedShape('qwen3', '300m', VIT_300M, _qwen3(2048, 28, 16, 6144)),
    'OpenGVLab/InternVL3_5-4B': ReleasedShape('qwen3', '300m', VIT_300M, _qwen3(2560, 36, 32, 9728)),
    'OpenGVLab/InternVL3_5-8B': ReleasedShape('qwen3', '300m', VIT_300M, _qwen3(4096, 36, 32, 12288)),
    'OpenGVLab/InternVL3_5-14B': ReleasedShape('qwen3', '300m', VIT_300M, _qwen3(5120, 40, 40, 17408)),
    'OpenGVLab/InternVL3_5-38B': ReleasedShape('qwen3', '6b', VIT_6B, _qwen3(5120, 64, 64, 25600)),
    'OpenGVLab/InternVL3_5-30B-A3B': ReleasedShape('qwen3_moe', '300m', VIT_300M, QWEN3_30B_A3B),
    'OpenGVLab/InternVL3_5-241B-A28B': ReleasedShape('qwen3_moe', '6b', VIT_6B, QWEN3_235B_A22B),
    'OpenGVLab/InternVL3_5-GPT-OSS-20B-A4B-Preview': ReleasedShape('gpt_oss', '300m', VIT_300M, GPT_OSS_20B),
}
# The parts InternVL-Chat-V1-2 was assembled from (configs/v1_2): an InternViT folder and an LLM folder.
RELEASED_PARTS: Dict[str, ReleasedShape] = {
    'OpenGVLab/InternViT-6B-448px-V1-2 + NousResearch/Nous-Hermes-2-Yi-34B':
        ReleasedShape('llama', '6b', VIT_6B, YI_34B),
}
