"""Random tiny InternVL checkpoints with exactly the official layout, for tests and the offline demo.

The same loading code runs on these and on the released models: only the sizes differ.
"""
import os
from typing import Any, Dict, Optional, Tuple

import torch

from ..checkpoint_layout import NATIVE, OFFICIAL
from ..model.checkpoint.export import atomic_output_dir, save_hf, save_official, write_json, write_safetensors
from ..model.checkpoint.key_maps import llama_to_internlm2
from ..model.checkpoint.load import build_language_model, build_network, build_vision_model, img_context_token_id
from .tokenizer import build_tiny_tokenizer

# Chat template each family's released InternVL models use (config.json `template`).
FAMILY_TEMPLATES = {'qwen2': 'internvl2_5', 'qwen3': 'internvl2_5', 'qwen3_moe': 'internvl2_5',
                    'gpt_oss': 'internvl3_5_gpt_oss', 'internlm2': 'internlm2-chat', 'phi3': 'phi3-chat',
                    'llama': 'Hermes-2'}
VIT_STYLES = ('300m', '6b')

_OFFICIAL_AUTO_MAP = {
    'AutoConfig': 'configuration_internvl_chat.InternVLChatConfig',
    'AutoModel': 'modeling_internvl_chat.InternVLChatModel',
    'AutoModelForCausalLM': 'modeling_internvl_chat.InternVLChatModel',
}


def tiny_vision_config(style: str, hidden_size: int = 64, layers: int = 2) -> Dict[str, Any]:
    if style not in VIT_STYLES:
        raise ValueError(f"vit style '{style}' is not one of {VIT_STYLES}")
    six_b = style == '6b'
    return {
        'architectures': ['InternVisionModel'], 'model_type': 'intern_vit_6b',
        'hidden_size': hidden_size, 'num_hidden_layers': layers, 'num_attention_heads': 4,
        'intermediate_size': 2 * hidden_size, 'image_size': 448, 'patch_size': 14, 'num_channels': 3,
        'qkv_bias': not six_b, 'qk_normalization': six_b, 'norm_type': 'rms_norm' if six_b else 'layer_norm',
        'layer_norm_eps': 1e-6, 'initializer_factor': 0.1 if six_b else 1.0, 'initializer_range': 0.02,
        'drop_path_rate': 0.0, 'attention_dropout': 0.0, 'dropout': 0.0, 'hidden_act': 'gelu', 'use_flash_attn': False,
    }


def tiny_llm_config(family: str, tokenizer: Any, hidden_size: int = 64, layers: int = 2) -> Dict[str, Any]:
    vocab = (len(tokenizer) + 7) // 8 * 8
    common = {
        'hidden_size': hidden_size, 'intermediate_size': 2 * hidden_size, 'num_hidden_layers': layers,
        'num_attention_heads': 4, 'num_key_value_heads': 2, 'max_position_embeddings': 8192, 'vocab_size': vocab,
        'hidden_act': 'silu', 'initializer_range': 0.02, 'tie_word_embeddings': False, 'torch_dtype': 'bfloat16',
        'bos_token_id': tokenizer.bos_token_id, 'eos_token_id': tokenizer.eos_token_id,
        'pad_token_id': tokenizer.pad_token_id,
    }
    if family == 'qwen2':
        return {'architectures': ['Qwen2ForCausalLM'], 'model_type': 'qwen2', **common, 'rms_norm_eps': 1e-6,
                'rope_theta': 1000000.0, 'use_sliding_window': False, 'sliding_window': 4096, 'attention_dropout': 0.0}
    if family == 'qwen3':
        # As Qwen3-0.6B (InternVL3_5-1B): head_dim is its own field, not hidden_size / heads, and q/k are normed.
        return {'architectures': ['Qwen3ForCausalLM'], 'model_type': 'qwen3', **common, 'head_dim': 32,
                'rms_norm_eps': 1e-6, 'rope_theta': 1000000, 'rope_scaling': None, 'attention_bias': False,
                'use_sliding_window': False, 'sliding_window': None, 'max_window_layers': layers,
                'attention_dropout': 0.0}
    if family == 'qwen3_moe':
        # As Qwen3-30B-A3B (InternVL3_5-30B-A3B): every layer sparse, top-k of the experts, the router's weights
        # renormalised; the aux-loss coefficient is the released one. The experts are as wide as the model: every
        # 4-bit layer then has at least 64 inputs, which bitsandbytes' CPU inference kernels need (one block).
        return {'architectures': ['Qwen3MoeForCausalLM'], 'model_type': 'qwen3_moe', **common, 'head_dim': 32,
                'moe_intermediate_size': hidden_size, 'num_experts': 4, 'num_experts_per_tok': 2,
                'norm_topk_prob': True, 'decoder_sparse_step': 1, 'mlp_only_layers': [],
                'output_router_logits': False, 'router_aux_loss_coef': 0.001, 'rms_norm_eps': 1e-6,
                'rope_theta': 1000000, 'rope_scaling': None, 'attention_bias': False, 'use_sliding_window': False,
                'sliding_window': None, 'max_window_layers': layers, 'attention_dropout': 0.0}
    if family == 'gpt_oss':
        # As gpt-oss-20b (InternVL3_5-GPT-OSS-20B-A4B): sliding-window and full attention layers in turn (a window
        # shorter than the tests' prompts, so both kinds do work), attention sinks, biased projections, YaRN rope.
        return {'architectures': ['GptOssForCausalLM'], 'model_type': 'gpt_oss', **common, 'head_dim': 16,
                'intermediate_size': hidden_size, 'num_local_experts': 4, 'num_experts_per_tok': 2,
                'experts_per_token': 2, 'output_router_logits': False, 'router_aux_loss_coef': 0.9,
                'layer_types': ['sliding_attention', 'full_attention'] * (layers // 2), 'sliding_window': 16,
                'attention_bias': True, 'swiglu_limit': 7.0, 'rms_norm_eps': 1e-5, 'rope_theta': 150000,
                'initial_context_length': 4096, 'max_position_embeddings': 131072,
                'rope_scaling': {'rope_type': 'yarn', 'factor': 32.0, 'beta_fast': 32.0, 'beta_slow': 1.0,
                                 'original_max_position_embeddings': 4096, 'truncate': False},
                'attention_dropout': 0.0}
    if family == 'internlm2':
        return {'architectures': ['InternLM2ForCausalLM'], 'model_type': 'internlm2',
                'auto_map': {'AutoConfig': 'configuration_internlm2.InternLM2Config',
                             'AutoModelForCausalLM': 'modeling_internlm2.InternLM2ForCausalLM'},
                **common, 'rms_norm_eps': 1e-5, 'rope_theta': 1000000, 'bias': False,
                'rope_scaling': {'type': 'dynamic', 'factor': 2.0}, 'attn_implementation': 'eager'}
    if family == 'phi3':
        # Phi-3-mini-128k's long-context rope as InternVL2-4B / Mini-InternVL-4B-V1-5 ship it (type 'su', a
        # factor per rotary frequency: head_dim / 2 of them).
        frequencies = hidden_size // common['num_attention_heads'] // 2
        return {'architectures': ['Phi3ForCausalLM'], 'model_type': 'phi3', **common, 'num_key_value_heads': 4,
                'rms_norm_eps': 1e-5, 'rope_theta': 10000.0, 'max_position_embeddings': 131072,
                'original_max_position_embeddings': 4096, 'sliding_window': 262144,
                'rope_scaling': {'type': 'su', 'short_factor': [1.0 + 0.01 * i for i in range(frequencies)],
                                 'long_factor': [1.0 + 4.0 * i for i in range(frequencies)]},
                'attention_dropout': 0.0, 'resid_pdrop': 0.0, 'embd_pdrop': 0.0}
    if family == 'llama':
        return {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', **common, 'rms_norm_eps': 1e-5,
                'rope_theta': 5000000.0, 'attention_bias': False, 'mlp_bias': False}
    raise ValueError(f"llm family '{family}' is not one of {sorted(FAMILY_TEMPLATES)}")


def tiny_internvl_config(family: str, vit: str, tokenizer: Any) -> Dict[str, Any]:
    """An official-format config.json (model_type internvl_chat) for a tiny model."""
    return {
        'architectures': ['InternVLChatModel'], 'auto_map': dict(_OFFICIAL_AUTO_MAP), 'model_type': 'internvl_chat',
        'vision_config': tiny_vision_config(vit), 'llm_config': tiny_llm_config(family, tokenizer),
        'template': FAMILY_TEMPLATES[family], 'select_layer': -1, 'downsample_ratio': 0.5, 'ps_version': 'v2',
        'force_image_size': 448, 'dynamic_image_size': True, 'use_thumbnail': True, 'min_dynamic_patch': 1,
        'max_dynamic_patch': 12, 'use_backbone_lora': 0, 'use_llm_lora': 0, 'pad2square': False,
        'tie_word_embeddings': False, 'torch_dtype': 'bfloat16',
    }


def build_tiny_checkpoint(out_dir: str, llm: str = 'qwen2', vit: str = '300m', seed: int = 0,
                          dtype: torch.dtype = torch.float32, max_shard_bytes: Optional[int] = None,
                          overwrite: bool = False, layout: str = OFFICIAL) -> Dict[str, Any]:
    """Writes a random tiny checkpoint to `out_dir`, in the official layout or transformers' native one ('hf', as
    the -HF releases: the same weights for the same seed); returns its config dict in the official fields."""
    if layout not in (OFFICIAL, NATIVE):
        raise ValueError(f"layout '{layout}' is not one of {[OFFICIAL, NATIVE]}")
    tokenizer = build_tiny_tokenizer(llm)
    config = tiny_internvl_config(llm, vit, tokenizer)
    torch.manual_seed(seed)
    network = build_network(config, None, img_context_token_id(tokenizer, out_dir), out_dir, dtype=dtype)
    kwargs = {} if max_shard_bytes is None else {'max_shard_bytes': max_shard_bytes}
    save = save_official if layout == OFFICIAL else save_hf
    save(network, config, tokenizer, out_dir, dtype=dtype, overwrite=overwrite, **kwargs)
    return config


def build_tiny_parts(out_dir: str, llm: str = 'llama', vit: str = '6b', seed: int = 0) -> Tuple[str, str]:
    """A tiny InternViT folder and a tiny LLM folder (its own layout and a tokenizer without InternVL tokens),
    the inputs of a model assembled from parts; returns (vision_dir, llm_dir)."""
    torch.manual_seed(seed)
    vision_dir, llm_dir = os.path.join(out_dir, 'vit'), os.path.join(out_dir, 'llm')
    vision_config = tiny_vision_config(vit)
    vision = build_vision_model(vision_config, None, torch.float32, vision_dir)
    with atomic_output_dir(vision_dir) as tmp:
        write_safetensors(vision.state_dict(), tmp)
        write_json(os.path.join(tmp, 'config.json'), vision_config)
    tokenizer = build_tiny_tokenizer(llm, internvl_tokens=False)
    llm_config = tiny_llm_config(llm, tokenizer)
    weights = build_language_model(llm_config, None, torch.float32, llm_dir).state_dict()
    if llm == 'internlm2':
        weights = llama_to_internlm2(weights, llm_config['num_attention_heads'], llm_config['num_key_value_heads'])
    with atomic_output_dir(llm_dir) as tmp:
        write_safetensors(weights, tmp)
        write_json(os.path.join(tmp, 'config.json'), llm_config)
        tokenizer.save_pretrained(tmp)
    return vision_dir, llm_dir
