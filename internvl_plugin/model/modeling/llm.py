"""The language model: built by transformers from the checkpoint's `llm_config`, never with remote code.

InternLM2 has no class in transformers; its architecture is Llama's with fused projections, so it is
built as Llama and its weights are translated by the key maps in `checkpoint/key_maps.py`.
"""
from typing import Any, Dict, Type

import torch
import transformers
from packaging.version import Version
from transformers import LlamaConfig, PretrainedConfig

# The families InternVL ships, by the `architectures` entry of `llm_config`.
LLM_FAMILIES = {
    'Qwen2ForCausalLM': 'qwen2',
    'Qwen3ForCausalLM': 'qwen3',
    'Qwen3MoeForCausalLM': 'qwen3_moe',
    'GptOssForCausalLM': 'gpt_oss',
    'InternLM2ForCausalLM': 'internlm2',
    'Phi3ForCausalLM': 'phi3',
    'LlamaForCausalLM': 'llama',
}
# Per family: the transformers config class that builds it and the first transformers release that has it.
_FAMILY_CONFIGS = {'qwen2': ('Qwen2Config', '4.37.0'), 'qwen3': ('Qwen3Config', '4.51.0'),
                   'qwen3_moe': ('Qwen3MoeConfig', '4.51.0'), 'gpt_oss': ('GptOssConfig', '4.55.0'),
                   'phi3': ('Phi3Config', '4.40.0'), 'llama': ('LlamaConfig', '4.28.0')}

# Families transformers runs without SDPA (GPT-OSS's attention sinks): 'sdpa' means eager attention for them.
_NO_SDPA_FAMILIES = {'gpt_oss'}

# InternLM2 config field -> Llama config field, where the names differ.
_INTERNLM2_TO_LLAMA_FIELDS = {'bias': 'attention_bias'}
_INTERNLM2_ONLY_FIELDS = {'architectures', 'auto_map', 'model_type', 'attn_implementation', '_name_or_path',
                          'transformers_version', 'torch_dtype', 'bias'}


def llm_family(llm_config: Dict[str, Any], source: str = 'llm_config') -> str:
    """The family name ('qwen2', 'qwen3', 'qwen3_moe', 'gpt_oss', 'internlm2', 'phi3', 'llama') of an
    `llm_config` dict."""
    archs = llm_config.get('architectures') or []
    for arch in archs:
        if arch in LLM_FAMILIES:
            return LLM_FAMILIES[arch]
    raise ValueError(f'{source}: architectures {archs} is not supported; expected one of {sorted(LLM_FAMILIES)}')


def _rope_scaling(rope_scaling: Any) -> Any:
    """Phi-3's original name 'su' becomes transformers' 'longrope', under the key it came in. No key is added:
    Phi3Config of transformers 4 wants exactly `type`, `short_factor` and `long_factor`."""
    if not isinstance(rope_scaling, dict):
        return rope_scaling
    return {key: 'longrope' if key in ('type', 'rope_type') and value == 'su' else value
            for key, value in rope_scaling.items()}


def build_llm_config(llm_config: Dict[str, Any], source: str = 'llm_config') -> PretrainedConfig:
    """The transformers config that builds this LLM (InternLM2 as Llama)."""
    family = llm_family(llm_config, source)
    fields = {k: v for k, v in llm_config.items() if k not in ('architectures', 'auto_map', '_name_or_path')}
    fields['rope_scaling'] = _rope_scaling(fields.get('rope_scaling'))
    # InternVL keeps the output layer apart from the embeddings (its checkpoints carry both), whatever the LLM's own
    # config says: tying would drop the checkpoint's trained lm_head.
    fields['tie_word_embeddings'] = False
    if family == 'internlm2':
        llama_fields = {k: v for k, v in fields.items() if k not in _INTERNLM2_ONLY_FIELDS}
        for old, new in _INTERNLM2_TO_LLAMA_FIELDS.items():
            if old in fields:
                llama_fields[new] = fields[old]
        llama_fields['mlp_bias'] = False
        config = LlamaConfig(**llama_fields)
    else:
        fields.pop('model_type', None)
        config = family_config_class(family, llm_config['architectures'][0], source)(**fields)
    config.architectures = [{'internlm2': 'LlamaForCausalLM'}.get(family, llm_config['architectures'][0])]
    return config


def family_config_class(family: str, architecture: str, source: str) -> Type[PretrainedConfig]:
    """The config class of a family, or one line naming the transformers release that brings it."""
    name, first_release = _FAMILY_CONFIGS[family]
    config_class = getattr(transformers, name, None)
    if config_class is None:
        raise ValueError(f'{source}: {architecture} needs transformers >= {first_release} (installed: '
                         f'{transformers.__version__}); install a newer world (README, "Install")')
    return config_class


def attention_implementation(family: str, requested: str) -> str:
    """The attention transformers builds the family with: `requested`, or eager where 'sdpa' is asked of a family
    that has none (every config asks for 'sdpa')."""
    return 'eager' if requested == 'sdpa' and family in _NO_SDPA_FAMILIES else requested


def dtype_kwargs(dtype: torch.dtype) -> Dict[str, torch.dtype]:
    """transformers renamed `torch_dtype` to `dtype` in 4.56 and warns on the old name."""
    name = 'dtype' if Version(transformers.__version__) >= Version('4.56') else 'torch_dtype'
    return {name: dtype}
