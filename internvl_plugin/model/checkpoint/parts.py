"""A new InternVL assembled from a vision checkpoint and an LLM checkpoint (the InternVL-Chat-V1-2 recipe)."""
import os
from typing import Any, Dict, Optional, Tuple

from ..modeling.intern_vit import InternVisionConfig
from ..modeling.internvl_chat import build_mlp1
from ..modeling.llm import llm_family
from .key_maps import StateDict
from ...files import load_tokenizer, read_json
from .load import load_weights


def read_vision_config(folder: str) -> Dict[str, Any]:
    path = os.path.join(folder, 'config.json')
    config = read_json(path)
    if config.get('model_type') != 'intern_vit_6b' and 'InternVisionModel' not in (config.get('architectures') or []):
        raise ValueError(f"{path}: model_type is '{config.get('model_type')}', expected 'intern_vit_6b' "
                         '(an InternViT checkpoint)')
    return config


def assemble_config_and_weights(vision_path: str, llm_path: str, template: Optional[str], ps_version: str = 'v2',
                                downsample_ratio: float = 0.5, select_layer: int = -1,
                                trust_remote_code: bool = False) -> Tuple[Dict, StateDict, Any]:
    """An official-format config, official-named weights (with a fresh mlp1) and the LLM's tokenizer with the
    InternVL special tokens added."""
    vision_config = read_vision_config(vision_path)
    llm_config = read_json(os.path.join(llm_path, 'config.json'))
    llm_family(llm_config, source=os.path.join(llm_path, 'config.json'))
    tokenizer = load_tokenizer(llm_path, add_internvl_tokens=True, trust_remote_code=trust_remote_code)
    vision = InternVisionConfig.from_dict(vision_config)
    config = {
        'architectures': ['InternVLChatModel'], 'model_type': 'internvl_chat',
        'vision_config': vision_config, 'llm_config': llm_config, 'template': template,
        'select_layer': select_layer, 'downsample_ratio': downsample_ratio, 'ps_version': ps_version,
        'force_image_size': vision.image_size, 'dynamic_image_size': True, 'use_thumbnail': True,
        'min_dynamic_patch': 1, 'max_dynamic_patch': 12, 'use_backbone_lora': 0, 'use_llm_lora': 0,
        'pad2square': False, 'tie_word_embeddings': False,
    }
    weights = {'vision_model.' + k: v for k, v in load_weights(vision_path).items()}
    weights.update({'language_model.' + k: v for k, v in load_weights(llm_path).items()})
    mlp1 = build_mlp1(vision.hidden_size, llm_config['hidden_size'], downsample_ratio)
    weights.update({'mlp1.' + k: v for k, v in mlp1.state_dict().items()})
    return config, weights, tokenizer
