"""A training checkpoint + its config -> an official (or -hf) InternVL checkpoint folder."""
from typing import Any, Callable, Dict, Optional

import torch

from ...files import plain_config, train_dataset_config
from ...template_names import official_template_name
from ..preference_model import export_fields, weights_only
from .export import DEFAULT_MAX_SHARD_BYTES, save_hf, save_official
from .trained import apply_trained_state, load_trained_state

FORMATS = ('official', 'hf')
# Dataset settings of the training config that the exported config.json must carry.
_DATASET_TO_CONFIG = {'template': 'template', 'min_dynamic_patch': 'min_dynamic_patch',
                      'max_dynamic_patch': 'max_dynamic_patch', 'use_thumbnail': 'use_thumbnail',
                      'image_size': 'force_image_size', 'dynamic_image_size': 'dynamic_image_size'}


def training_settings(cfg: Any) -> Dict[str, Any]:
    """Template and tiling settings of the training dataset, in config.json names (the template by its official
    name: the official code refuses XTuner's spellings)."""
    dataset = train_dataset_config(cfg)
    settings = {dst: dataset[src] for src, dst in _DATASET_TO_CONFIG.items() if dataset.get(src) is not None}
    if 'template' in settings:
        settings['template'] = official_template_name(settings['template'])
    return settings


def build_model_for_export(cfg: Any, dtype: torch.dtype):
    """The config's model, unquantised and without activation checkpointing, ready to take trained weights. A
    preference config's model is built as InternVL_V1_5 (the weights are the same; no reference copy)."""
    from ..internvl import InternVL_V1_5
    fields = plain_config(dict(cfg.model))
    model_type = fields.pop('type', InternVL_V1_5)
    # A class, or its dotted name in the config xtuner train saves into the work_dir.
    type_name = str(getattr(model_type, '__name__', model_type)).rsplit('.', 1)[-1]
    if type_name == 'InternVLPreference':
        fields = export_fields(fields)
    elif type_name != 'InternVL_V1_5':
        raise ValueError(f'the config builds {model_type}; expected model=dict(type=InternVL_V1_5, ...) or '
                         'InternVLPreference')
    if fields.get('expert_linears') is None:  # the experts' form the training had, which its LoRA names follow
        fields['expert_linears'] = bool(fields.get('quantization_llm', False))
    fields.update(quantization_llm=False, quantization_vit=False, use_activation_checkpointing=False,
                  pretrained_pth=None, torch_dtype=dtype)
    return InternVL_V1_5(**fields)


def _quiet(message: str) -> None:
    """The default `progress` of convert_checkpoint: says nothing."""


def convert_checkpoint(config_path: str, checkpoint: str, save_dir: str, fmt: Optional[str] = None,
                       dtype: torch.dtype = torch.bfloat16, overwrite: bool = False,
                       max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                       progress: Callable[[str], None] = _quiet) -> Dict[str, Any]:
    """Builds the config's model, loads the trained state strictly, merges LoRA and writes `save_dir`.

    `fmt` None writes the layout the base model came in. `progress` hears each stage as it starts (a large model
    takes minutes to load and write). Returns a summary: trained tensor count, the format written, remote-code
    files copied."""
    from mmengine.config import Config
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"format '{fmt}' is not one of {FORMATS}")
    try:
        cfg = Config.fromfile(config_path)
    except (OSError, ValueError):
        raise
    except Exception as error:  # the file is Python that MMEngine could not run as a config
        raise ValueError(f'{config_path}: cannot be read as a training config ({type(error).__name__}: {error})') \
            from None
    if 'model' not in cfg or not isinstance(cfg.model, dict):
        raise ValueError(f'{config_path}: not a training config (it defines no model dict); give the config the '
                         'run used, e.g. the copy xtuner train saved into the work dir')
    progress(f'reading the trained weights of {checkpoint}')
    trained = weights_only(load_trained_state(checkpoint))   # a preference run's reward shift is no weight
    progress(f'building the model of {config_path} from {cfg.model.get("model_path")}')
    try:
        model = build_model_for_export(cfg, dtype)
    except FileNotFoundError as error:
        if not str(error).startswith('model_path '):
            raise
        raise FileNotFoundError(f'{error} (the converter reads the base model from model.model_path in '
                                f'{config_path}: set it to the local folder there)') from None
    apply_trained_state(model, trained, f'{checkpoint} (loaded for {config_path})')
    progress(f'loaded {len(trained)} trained tensors; merging LoRA' if any('lora_' in key for key in trained)
             else f'loaded {len(trained)} trained tensors')
    network = model.merged_network()
    fmt = fmt or model.layout
    progress(f'writing the {fmt} layout to {save_dir}')
    summary: Dict[str, Optional[Any]] = {'trained_tensors': len(trained), 'format': fmt, 'remote_code': []}
    protected = {'the checkpoint': checkpoint, 'the config': config_path}
    if fmt == 'official':
        summary['remote_code'] = save_official(network, model.config, model.tokenizer, save_dir, dtype=dtype,
                                               base_dir=model.model_path, config_overrides=training_settings(cfg),
                                               overwrite=overwrite, max_shard_bytes=max_shard_bytes,
                                               protected=protected)
    else:
        save_hf(network, model.config, model.tokenizer, save_dir, dtype=dtype, base_dir=model.model_path,
                config_overrides=training_settings(cfg), overwrite=overwrite, max_shard_bytes=max_shard_bytes,
                protected=protected)
    return summary
