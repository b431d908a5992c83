"""Official InternVL checkpoint folders (or hub ids) -> config dict, weights, tokenizer, network."""
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from ...checkpoint_layout import NATIVE, read_checkpoint_config
from ...files import read_json
from ..modeling.intern_vit import InternVisionConfig, InternVisionModel
from ..modeling.internvl_chat import InternVLChatModel, build_mlp1
from ..modeling.llm import attention_implementation, build_llm_config, dtype_kwargs, llm_family
from ..modeling.moe import ExpertLinears, RouterAuxLoss, split_fused_experts
from ..quantization import quantize_linears_4bit
from .key_maps import StateDict, hf_to_network, official_to_network

IMG_CONTEXT_TOKEN = '<IMG_CONTEXT>'
_WEIGHT_INDEXES = ('model.safetensors.index.json', 'pytorch_model.bin.index.json')
_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
_TOP_MODULES = ('vision_model.', 'mlp1.', 'language_model.')


def read_internvl_config(folder: str) -> Dict[str, Any]:
    """The checkpoint's config in the official fields (a transformers-native folder's translated), checked."""
    config = read_checkpoint_config(folder)
    path = os.path.join(folder, 'config.json')
    for key in ('vision_config', 'llm_config'):
        if not isinstance(config.get(key), dict):
            raise ValueError(f'{path}: missing {key}; expected an official InternVL checkpoint config')
    llm_family(config['llm_config'], source=f'{path}: llm_config')
    return config


def load_checkpoint_weights(folder: str, config: Dict[str, Any], layout: str) -> StateDict:
    """The folder's weights in official names. A native (`layout` 'hf') folder's are mapped; where its text config
    ties the output layer to the embeddings and the file holds no output layer, the network gets it as a copy of
    them (InternVL never ties)."""
    weights = load_weights(folder)
    if layout != NATIVE:
        return weights
    weights = hf_to_network(weights, folder)
    head, embeddings = 'language_model.lm_head.weight', 'language_model.model.embed_tokens.weight'
    if head not in weights and embeddings in weights and config['llm_config'].get('tie_word_embeddings'):
        weights[head] = weights[embeddings].clone()
    return weights


def _load_weight_file(path: str) -> StateDict:
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location='cpu', weights_only=True)


def load_weights(folder: str) -> StateDict:
    """All tensors of a checkpoint folder: safetensors or .bin, one file or index + shards."""
    for index_name in _WEIGHT_INDEXES:
        index_path = os.path.join(folder, index_name)
        if os.path.isfile(index_path):
            shards = sorted(set(read_json(index_path)['weight_map'].values()))
            weights: StateDict = {}
            for shard in shards:
                weights.update(_load_weight_file(os.path.join(folder, shard)))
            return weights
    for name in _WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return _load_weight_file(path)
    raise FileNotFoundError(f'{folder} has no weights; expected model.safetensors, pytorch_model.bin '
                            'or a sharded index of either')


def check_keys(source: str, expected: Iterable[str], found: Iterable[str], missing_label: str = 'missing keys') -> None:
    """One error line naming the first missing and unexpected keys, when the two key sets differ."""
    expected, found = set(expected), set(found)
    raise_on_mismatch(source, sorted(expected - found), sorted(found - expected), missing_label)


def raise_on_mismatch(source: str, missing: List[str], unexpected: List[str],
                      missing_label: str = 'missing keys') -> None:
    parts = []
    if missing:
        parts.append(f'{missing_label} {missing[:5]} ({len(missing)} in all)')
    if unexpected:
        parts.append(f'unexpected keys {unexpected[:5]} ({len(unexpected)} in all)')
    if parts:
        raise ValueError(f'{source}: ' + '; '.join(parts))


def _load_module(module: nn.Module, weights: Optional[StateDict], source: str, dtype: torch.dtype) -> nn.Module:
    if weights is None:
        return module.to(dtype)
    check_keys(source, set(module.state_dict()), set(weights))
    module.load_state_dict(weights, strict=True, assign=True)
    return module.to(dtype)


def split_weights(weights: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def build_vision_model(vision_config: Dict[str, Any], weights: Optional[StateDict], dtype: torch.dtype,
                       source: str, drop_path_rate: Optional[float] = None) -> InternVisionModel:
    config = InternVisionConfig.from_dict(vision_config)
    if drop_path_rate is not None:
        config.drop_path_rate = drop_path_rate
    if weights is None:
        model = InternVisionModel(config)
        model.init_random_weights()
        return model.to(dtype)
    with torch.device('meta'):
        model = InternVisionModel(config)
    return _load_module(model, weights, source, dtype)


def build_language_model(llm_config: Dict[str, Any], weights: Optional[StateDict], dtype: torch.dtype,
                         source: str, attn_implementation: str = 'sdpa', quantization_config: Any = None,
                         expert_linears: bool = False) -> nn.Module:
    """A transformers causal LM from the official `llm_config`; `weights` in network (Llama-for-InternLM2) names.
    `expert_linears`: a Qwen3-MoE's experts as nn.Linear layers (see ExpertLinears), which quantisation needs."""
    import transformers
    from transformers import AutoModelForCausalLM
    family = llm_family(llm_config)
    config = build_llm_config(llm_config, source=f'{source}: llm_config')
    attn_implementation = attention_implementation(family, attn_implementation)
    if weights is None:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, **dtype_kwargs(dtype))
    else:
        # The concrete class: the Auto class insists on a path when given no name.
        model_class = getattr(transformers, config.architectures[0])
        model, info = model_class.from_pretrained(
            None, config=config, state_dict=weights, attn_implementation=attn_implementation, **dtype_kwargs(dtype),
            quantization_config=quantization_config, output_loading_info=True)
        raise_on_mismatch(source, sorted(info['missing_keys']), sorted(info['unexpected_keys']))
    split = split_fused_experts(model) if expert_linears and family == 'qwen3_moe' else 0
    if quantization_config is not None and (weights is None or split):
        # transformers quantised the checkpoint's nn.Linear layers, not those made here; the output layer stays.
        quantize_linears_4bit(model, keep=[model.get_output_embeddings()])
        model.is_loaded_in_4bit = True  # as transformers marks a quantised checkpoint, which peft reads
        if split:  # quantised now, as transformers quantised the rest (bitsandbytes does it when a weight moves)
            device = model.get_input_embeddings().weight.device
            for module in model.modules():
                if isinstance(module, ExpertLinears):
                    module.to(device)
    return model


def language_shape(llm_config: Dict[str, Any]) -> Tuple[int, int]:
    """(num_attention_heads, num_key_value_heads), what the InternLM2 key map needs."""
    heads = llm_config['num_attention_heads']
    return heads, llm_config.get('num_key_value_heads') or heads


def img_context_token_id(tokenizer: Any, source: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f'{source}: the tokenizer has no {IMG_CONTEXT_TOKEN} token')
    return token_id


def build_network(config: Dict[str, Any], weights: Optional[StateDict], img_context_id: int, source: str,
                  dtype: torch.dtype = torch.bfloat16, attn_implementation: str = 'sdpa',
                  quantization_config: Any = None, drop_path_rate: Optional[float] = None,
                  router_aux_loss_coef: Optional[float] = None, expert_linears: bool = False) -> InternVLChatModel:
    """The network from an official config dict and official-named weights (None: random initialisation). An MoE
    LLM's training loss adds its router's load-balancing loss, weighed by `router_aux_loss_coef` (None: the
    coefficient of its config)."""
    family = llm_family(config['llm_config'])
    network_weights = None
    if weights is not None:
        stray = sorted(k for k in weights if not k.startswith(_TOP_MODULES))
        if stray:
            raise ValueError(f'{source}: unexpected keys {stray[:5]} ({len(stray)} in all); expected only '
                             'vision_model.*, mlp1.* and language_model.*')
        network_weights = official_to_network(weights, family, *language_shape(config['llm_config']))
    part = (lambda prefix: None) if network_weights is None else (lambda prefix: split_weights(network_weights, prefix))
    vision = build_vision_model(config['vision_config'], part('vision_model.'), dtype, source, drop_path_rate)
    language = build_language_model(config['llm_config'], part('language_model.'), dtype, source,
                                    attn_implementation, quantization_config, expert_linears)
    ratio = config.get('downsample_ratio', 0.5)
    mlp1 = build_mlp1(vision.config.hidden_size, language.config.hidden_size, ratio)
    if network_weights is None:
        mlp1 = mlp1.to(dtype)
    else:
        mlp1 = _load_module(mlp1, part('mlp1.'), source, dtype)
    return InternVLChatModel(vision, mlp1, language, img_context_id, select_layer=config.get('select_layer', -1),
                             downsample_ratio=ratio, ps_version=config.get('ps_version', 'v2'),
                             router_aux_loss=RouterAuxLoss.for_llm(family, language.config, router_aux_loss_coef))
