"""The two layouts an InternVL checkpoint comes in, read as one config: the official one (`model_type: internvl_chat`,
remote code) and transformers' native one (`model_type: internvl`, the `-HF` releases of InternVL3 / InternVL3.5).

Everything downstream (the network builder, the dataset's template and tiling) reads the official config fields; a
native folder's config.json and preprocessor_config.json are translated into them here, by tables. Both wings read
this module. The other direction (official -> native, for `--format hf`) is `model/checkpoint/export.py`'s
`hf_config`.
"""
import os
from typing import Any, Dict, Tuple

from .files import read_json

OFFICIAL, NATIVE = 'official', 'hf'
LAYOUTS = {'internvl_chat': OFFICIAL, 'internvl': NATIVE}

# Native `text_config.model_type` -> the official `llm_config.architectures` entry.
NATIVE_TEXT_ARCHITECTURES = {'qwen2': 'Qwen2ForCausalLM', 'qwen3': 'Qwen3ForCausalLM',
                             'qwen3_moe': 'Qwen3MoeForCausalLM', 'gpt_oss': 'GptOssForCausalLM',
                             'llama': 'LlamaForCausalLM', 'phi3': 'Phi3ForCausalLM'}
# Native `vision_config` field -> official `vision_config` field (sizes given as [h, w] become one number).
NATIVE_VISION_FIELDS = {'hidden_size': 'hidden_size', 'num_hidden_layers': 'num_hidden_layers',
                        'num_attention_heads': 'num_attention_heads', 'intermediate_size': 'intermediate_size',
                        'attention_bias': 'qkv_bias', 'use_qk_norm': 'qk_normalization', 'norm_type': 'norm_type',
                        'layer_norm_eps': 'layer_norm_eps', 'image_size': 'image_size', 'patch_size': 'patch_size',
                        'layer_scale_init_value': 'initializer_factor', 'hidden_act': 'hidden_act',
                        'num_channels': 'num_channels', 'initializer_range': 'initializer_range'}
# preprocessor_config.json (GotOcr2 image processor) field -> official tiling field.
NATIVE_TILING_FIELDS = {'crop_to_patches': 'dynamic_image_size', 'min_patches': 'min_dynamic_patch',
                        'max_patches': 'max_dynamic_patch'}
# What a native folder without a preprocessor_config.json tiles with: the released models' settings.
NATIVE_DEFAULT_TILING = {'dynamic_image_size': True, 'use_thumbnail': True, 'min_dynamic_patch': 1,
                         'max_dynamic_patch': 12}
# The template of the released models with a native layout (InternVL2.5 onwards): by text_config.model_type.
NATIVE_TEMPLATES = {'gpt_oss': 'internvl3_5_gpt_oss'}
NATIVE_DEFAULT_TEMPLATE = 'internvl2_5'


def _config_and_layout(folder: str) -> Tuple[Dict[str, Any], str]:
    """config.json and its layout, 'official' or 'hf' by model_type; one line for anything else."""
    path = os.path.join(folder, 'config.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{folder} has no config.json; expected an InternVL checkpoint folder')
    config = read_json(path)
    model_type = config.get('model_type')
    if model_type not in LAYOUTS:
        raise ValueError(f"{path}: model_type is '{model_type}', expected 'internvl_chat' (an official InternVL "
                         "checkpoint) or 'internvl' (transformers' native InternVL)")
    return config, LAYOUTS[model_type]


def checkpoint_layout(folder: str) -> str:
    """'official' or 'hf'."""
    return _config_and_layout(folder)[1]


def read_checkpoint_config(folder: str) -> Dict[str, Any]:
    """config.json in the official fields, whichever layout the folder has."""
    config, layout = _config_and_layout(folder)
    if layout == OFFICIAL:
        return config
    processor_path = os.path.join(folder, 'preprocessor_config.json')
    processor = read_json(processor_path) if os.path.isfile(processor_path) else None
    return official_config_from_native(config, processor, os.path.join(folder, 'config.json'))


def _single(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


def official_config_from_native(config: Dict[str, Any], processor: Any, source: str) -> Dict[str, Any]:
    """A native InternVL config (and its image processor's settings, if any) as an official config dict."""
    for key in ('vision_config', 'text_config'):
        if not isinstance(config.get(key), dict):
            raise ValueError(f'{source}: missing {key}; expected a transformers-native InternVL config')
    text = dict(config['text_config'])
    model_type = text.get('model_type')
    if model_type not in NATIVE_TEXT_ARCHITECTURES:
        raise ValueError(f"{source}: text_config.model_type '{model_type}' is not supported; expected one of "
                         f'{sorted(NATIVE_TEXT_ARCHITECTURES)}')
    text['architectures'] = [NATIVE_TEXT_ARCHITECTURES[model_type]]
    vision = {official: _single(config['vision_config'][native]) for native, official in NATIVE_VISION_FIELDS.items()
              if native in config['vision_config']}
    vision.update(architectures=['InternVisionModel'], model_type='intern_vit_6b')
    layer = config.get('vision_feature_layer', -1)
    if not isinstance(layer, int):
        raise ValueError(f'{source}: vision_feature_layer is {layer!r}; expected one layer index')
    tiling = dict(NATIVE_DEFAULT_TILING)
    if processor is not None:
        tiling.update({official: processor[native] for native, official in NATIVE_TILING_FIELDS.items()
                       if native in processor})
    return {
        'architectures': ['InternVLChatModel'], 'model_type': 'internvl_chat', 'vision_config': vision,
        'llm_config': text,
        'template': NATIVE_TEMPLATES.get(model_type, NATIVE_DEFAULT_TEMPLATE), 'select_layer': layer,
        'downsample_ratio': config.get('downsample_ratio', 0.5), 'ps_version': 'v2',
        'force_image_size': vision.get('image_size', 448), **tiling, 'use_backbone_lora': 0, 'use_llm_lora': 0,
        'tie_word_embeddings': False, 'torch_dtype': config.get('torch_dtype', text.get('torch_dtype', 'bfloat16')),
    }
