"""State-dict key maps between the official InternVL layout, this plugin's network, and transformers' native
InternVL layout. Tables first; each direction is one small function.

Keys use `{}` for the layer index. The network's keys equal the official ones except for the InternLM2
language model, which the plugin runs as Llama.
"""
import re
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

# InternLM2 (official, under `language_model.`) -> Llama (this plugin's network). `attention.wqkv` is split
# by `_split_wqkv` into q/k/v_proj; every other entry is a pure rename.
INTERNLM2_TO_LLAMA = {
    'model.tok_embeddings.weight': 'model.embed_tokens.weight',
    'model.layers.{}.attention.wo.weight': 'model.layers.{}.self_attn.o_proj.weight',
    'model.layers.{}.feed_forward.w1.weight': 'model.layers.{}.mlp.gate_proj.weight',
    'model.layers.{}.feed_forward.w3.weight': 'model.layers.{}.mlp.up_proj.weight',
    'model.layers.{}.feed_forward.w2.weight': 'model.layers.{}.mlp.down_proj.weight',
    'model.layers.{}.attention_norm.weight': 'model.layers.{}.input_layernorm.weight',
    'model.layers.{}.ffn_norm.weight': 'model.layers.{}.post_attention_layernorm.weight',
    'model.norm.weight': 'model.norm.weight',
    'output.weight': 'lm_head.weight',
}
INTERNLM2_WQKV = 'model.layers.{}.attention.wqkv.weight'
LLAMA_QKV = ('model.layers.{}.self_attn.q_proj.weight', 'model.layers.{}.self_attn.k_proj.weight',
             'model.layers.{}.self_attn.v_proj.weight')

# Qwen3-MoE's experts: transformers 5 holds each layer's as two 3-D tensors (gate and up stacked per expert), while
# checkpoints (official and native, saved by transformers 4) hold one MLP per expert; `_per_expert` splits them
# for export, transformers joins them again on loading. GPT-OSS checkpoints hold the 3-D tensors themselves.
QWEN3_MOE_FUSED_EXPERTS = {
    'model.layers.{}.mlp.experts.gate_up_proj': ('model.layers.{}.mlp.experts.{}.gate_proj.weight',
                                                 'model.layers.{}.mlp.experts.{}.up_proj.weight'),
    'model.layers.{}.mlp.experts.down_proj': ('model.layers.{}.mlp.experts.{}.down_proj.weight',),
}

# Official -> transformers-native InternVL (`model_type: internvl`, transformers >= 4.52), vision and projector.
# The vision `attn.qkv` is split into q/k/v_proj by `_split_vision_qkv`.
OFFICIAL_TO_HF_VISION = {
    'vision_model.embeddings.class_embedding': 'model.vision_tower.embeddings.cls_token',
    'vision_model.embeddings.position_embedding': 'model.vision_tower.embeddings.position_embeddings',
    'vision_model.embeddings.patch_embedding.weight': 'model.vision_tower.embeddings.patch_embeddings.projection.weight',
    'vision_model.embeddings.patch_embedding.bias': 'model.vision_tower.embeddings.patch_embeddings.projection.bias',
    'vision_model.encoder.layers.{}.ls1': 'model.vision_tower.encoder.layer.{}.lambda_1',
    'vision_model.encoder.layers.{}.ls2': 'model.vision_tower.encoder.layer.{}.lambda_2',
    'vision_model.encoder.layers.{}.norm1.weight': 'model.vision_tower.encoder.layer.{}.layernorm_before.weight',
    'vision_model.encoder.layers.{}.norm1.bias': 'model.vision_tower.encoder.layer.{}.layernorm_before.bias',
    'vision_model.encoder.layers.{}.norm2.weight': 'model.vision_tower.encoder.layer.{}.layernorm_after.weight',
    'vision_model.encoder.layers.{}.norm2.bias': 'model.vision_tower.encoder.layer.{}.layernorm_after.bias',
    'vision_model.encoder.layers.{}.attn.proj.weight': 'model.vision_tower.encoder.layer.{}.attention.projection_layer.weight',
    'vision_model.encoder.layers.{}.attn.proj.bias': 'model.vision_tower.encoder.layer.{}.attention.projection_layer.bias',
    'vision_model.encoder.layers.{}.attn.q_norm.weight': 'model.vision_tower.encoder.layer.{}.attention.q_norm.weight',
    'vision_model.encoder.layers.{}.attn.k_norm.weight': 'model.vision_tower.encoder.layer.{}.attention.k_norm.weight',
    'vision_model.encoder.layers.{}.mlp.fc1.weight': 'model.vision_tower.encoder.layer.{}.mlp.fc1.weight',
    'vision_model.encoder.layers.{}.mlp.fc1.bias': 'model.vision_tower.encoder.layer.{}.mlp.fc1.bias',
    'vision_model.encoder.layers.{}.mlp.fc2.weight': 'model.vision_tower.encoder.layer.{}.mlp.fc2.weight',
    'vision_model.encoder.layers.{}.mlp.fc2.bias': 'model.vision_tower.encoder.layer.{}.mlp.fc2.bias',
    'mlp1.0.weight': 'model.multi_modal_projector.layer_norm.weight',
    'mlp1.0.bias': 'model.multi_modal_projector.layer_norm.bias',
    'mlp1.1.weight': 'model.multi_modal_projector.linear_1.weight',
    'mlp1.1.bias': 'model.multi_modal_projector.linear_1.bias',
    'mlp1.3.weight': 'model.multi_modal_projector.linear_2.weight',
    'mlp1.3.bias': 'model.multi_modal_projector.linear_2.bias',
}
VISION_QKV_WEIGHT = 'vision_model.encoder.layers.{}.attn.qkv.{}'
HF_VISION_QKV = tuple(f'model.vision_tower.encoder.layer.{{}}.attention.{name}.{{}}' for name in ('q_proj', 'k_proj', 'v_proj'))

# Network language-model prefixes -> transformers-native InternVL prefixes (any family, Llama-named).
NETWORK_TO_HF_LANGUAGE = {
    'language_model.model.': 'model.language_model.',
    'language_model.lm_head.': 'lm_head.',
}


# Native prefixes of checkpoints saved before transformers 4.52 moved the parts under `model.` -> today's.
LEGACY_HF_PREFIXES = {
    'language_model.model.': 'model.language_model.',
    'language_model.lm_head.': 'lm_head.',
    'vision_tower.': 'model.vision_tower.',
    'multi_modal_projector.': 'model.multi_modal_projector.',
}


@lru_cache(maxsize=None)
def _pattern_regex(pattern: str) -> 're.Pattern':
    return re.compile('^' + re.escape(pattern).replace(r'\{\}', r'(\d+)') + '$')


def _rename(key: str, table: Dict[str, str]) -> str:
    """`key` renamed by the first table pattern it matches; KeyError if none matches."""
    for src, dst in table.items():
        match = _pattern_regex(src).match(key)
        if match:
            return dst.format(*match.groups())
    raise KeyError(key)


def _layer_index(key: str, pattern: str) -> str:
    match = _pattern_regex(pattern).match(key)
    return match.group(1) if match else ''


def _wqkv_groups(num_heads: int, num_kv_heads: int) -> int:
    if num_heads % num_kv_heads:
        raise ValueError(f'num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}')
    return num_heads // num_kv_heads


def _split_wqkv(wqkv: torch.Tensor, num_heads: int, num_kv_heads: int) -> Tuple[torch.Tensor, ...]:
    """InternLM2's fused rows are laid out per KV group as [G query heads, 1 key head, 1 value head] x head_dim."""
    groups = _wqkv_groups(num_heads, num_kv_heads)
    hidden = wqkv.shape[-1]
    head_dim = wqkv.shape[0] // (num_kv_heads * (groups + 2))
    grouped = wqkv.reshape(num_kv_heads, groups + 2, head_dim, hidden)
    q = grouped[:, :groups].reshape(num_heads * head_dim, hidden)
    k = grouped[:, groups].reshape(num_kv_heads * head_dim, hidden)
    v = grouped[:, groups + 1].reshape(num_kv_heads * head_dim, hidden)
    return q.clone(), k.clone(), v.clone()


def _fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    groups = _wqkv_groups(num_heads, num_kv_heads)
    hidden = q.shape[-1]
    head_dim = q.shape[0] // num_heads
    grouped = torch.cat([q.reshape(num_kv_heads, groups, head_dim, hidden),
                         k.reshape(num_kv_heads, 1, head_dim, hidden),
                         v.reshape(num_kv_heads, 1, head_dim, hidden)], dim=1)
    return grouped.reshape(-1, hidden)


def internlm2_to_llama(state_dict: StateDict, num_heads: int, num_kv_heads: int) -> StateDict:
    """An InternLM2 causal-LM state dict (no `language_model.` prefix) in Llama names."""
    out = {}
    for key, tensor in state_dict.items():
        layer = _layer_index(key, INTERNLM2_WQKV)
        if layer:
            for name, part in zip(LLAMA_QKV, _split_wqkv(tensor, num_heads, num_kv_heads)):
                out[name.format(layer)] = part
        else:
            out[_rename(key, INTERNLM2_TO_LLAMA)] = tensor
    return out


def llama_to_internlm2(state_dict: StateDict, num_heads: int, num_kv_heads: int) -> StateDict:
    """The inverse of `internlm2_to_llama`."""
    reverse = {dst: src for src, dst in INTERNLM2_TO_LLAMA.items()}
    out = {}
    for key, tensor in state_dict.items():
        if _layer_index(key, LLAMA_QKV[1]) or _layer_index(key, LLAMA_QKV[2]):
            continue  # fused together with the query rows below
        layer = _layer_index(key, LLAMA_QKV[0])
        if layer:
            q, k, v = (state_dict[name.format(layer)] for name in LLAMA_QKV)
            out[INTERNLM2_WQKV.format(layer)] = _fuse_wqkv(q, k, v, num_heads, num_kv_heads)
        else:
            out[_rename(key, reverse)] = tensor
    return out


def _per_expert(state_dict: StateDict) -> StateDict:
    """A causal-LM state dict with 3-D Qwen3-MoE expert tensors in one projection per expert (keys already per
    expert pass unchanged)."""
    out = {}
    for key, tensor in state_dict.items():
        fused = next((pattern for pattern in QWEN3_MOE_FUSED_EXPERTS if _layer_index(key, pattern)), None)
        if fused is None:
            out[key] = tensor
            continue
        layer, names = _layer_index(key, fused), QWEN3_MOE_FUSED_EXPERTS[fused]
        for expert, weights in enumerate(tensor):
            for name, part in zip(names, weights.chunk(len(names), dim=0)):
                out[name.format(layer, expert)] = part.clone()
    return out


def _map_language(state_dict: StateDict, convert: Callable[[StateDict], StateDict]) -> StateDict:
    """Applies `convert` to the `language_model.` part of a whole-model state dict."""
    prefix = 'language_model.'
    language = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    out.update({prefix + k: v for k, v in convert(language).items()})
    return out


def official_to_network(state_dict: StateDict, family: str, num_heads: int, num_kv_heads: int) -> StateDict:
    """Official InternVL keys -> this plugin's network keys."""
    if family != 'internlm2':
        return dict(state_dict)
    return _map_language(state_dict, lambda sd: internlm2_to_llama(sd, num_heads, num_kv_heads))


def network_to_official(state_dict: StateDict, family: str, num_heads: int, num_kv_heads: int) -> StateDict:
    """This plugin's network keys -> official InternVL keys."""
    if family == 'qwen3_moe':
        return _map_language(state_dict, _per_expert)
    if family != 'internlm2':
        return dict(state_dict)
    return _map_language(state_dict, lambda sd: llama_to_internlm2(sd, num_heads, num_kv_heads))


def network_to_hf(state_dict: StateDict, family: str) -> StateDict:
    """This plugin's network keys -> transformers-native InternVL keys (`model_type: internvl`)."""
    if family == 'qwen3_moe':
        state_dict = _map_language(state_dict, _per_expert)
    out = {}
    for key, tensor in state_dict.items():
        layer = _layer_index(key, VISION_QKV_WEIGHT.format('{}', 'weight')) or \
            _layer_index(key, VISION_QKV_WEIGHT.format('{}', 'bias'))
        if layer:
            kind = key.rsplit('.', 1)[1]
            for name, part in zip(HF_VISION_QKV, tensor.chunk(3, dim=0)):
                out[name.format(layer, kind)] = part.clone()
            continue
        prefix = next((p for p in NETWORK_TO_HF_LANGUAGE if key.startswith(p)), None)
        if prefix:
            out[NETWORK_TO_HF_LANGUAGE[prefix] + key[len(prefix):]] = tensor
        else:
            out[_rename(key, OFFICIAL_TO_HF_VISION)] = tensor
    return out


def _native_vision_qkv(key: str) -> Optional[Tuple[str, str, int]]:
    """(layer, 'weight' or 'bias', 0 / 1 / 2 for q / k / v) of a native vision attention projection key."""
    for index, name in enumerate(HF_VISION_QKV):
        for kind in ('weight', 'bias'):
            layer = _layer_index(key, name.format('{}', kind))
            if layer:
                return layer, kind, index
    return None


def hf_to_network(state_dict: StateDict, source: str) -> StateDict:
    """Transformers-native InternVL keys (today's or the pre-4.52 prefixes) -> this plugin's network keys. Keys no
    table places are an error naming them."""
    reverse_language = {dst: src for src, dst in NETWORK_TO_HF_LANGUAGE.items()}
    reverse_vision = {dst: src for src, dst in OFFICIAL_TO_HF_VISION.items()}
    out, unplaced, projections = {}, [], {}
    for key, tensor in state_dict.items():
        legacy = next((p for p in LEGACY_HF_PREFIXES if key.startswith(p)), None)
        key = LEGACY_HF_PREFIXES[legacy] + key[len(legacy):] if legacy else key
        qkv = _native_vision_qkv(key)
        prefix = next((p for p in reverse_language if key.startswith(p)), None)
        if qkv:
            projections.setdefault(qkv[:2], {})[qkv[2]] = tensor
        elif prefix:
            out[reverse_language[prefix] + key[len(prefix):]] = tensor
        else:
            try:
                out[_rename(key, reverse_vision)] = tensor
            except KeyError:
                unplaced.append(key)
    for (layer, kind), parts in projections.items():
        if len(parts) == 3:
            out[VISION_QKV_WEIGHT.format(layer, kind)] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
        else:
            unplaced += [HF_VISION_QKV[i].format(layer, kind) for i in parts]
    if unplaced:
        raise ValueError(f'{source}: keys {sorted(unplaced)[:5]} ({len(unplaced)} in all) fit no part of the native '
                         'InternVL layout (vision tower, projector, language model)')
    return out
