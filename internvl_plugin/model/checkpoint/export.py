"""Writes a network as an official InternVL checkpoint folder or as transformers' native (-hf) layout.

Everything goes into a temporary sibling folder that is renamed into place at the end, so a crash or a bad
argument never leaves a half-written checkpoint, and an existing folder is only replaced when asked.
"""
import contextlib
import copy
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
from typing import Any, Dict, Iterator, List, Optional

import torch

from ...internlm2_tokenizer import InternLM2Tokenizer
from ..modeling.internvl_chat import IMAGENET_MEAN, IMAGENET_STD, InternVLChatModel
from ..modeling.llm import build_llm_config, llm_family
from .key_maps import StateDict, network_to_hf, network_to_official
from .load import language_shape

DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3
# Files beside the weights that the official toolchain reads, copied from the base checkpoint.
_COPIED_SUFFIXES = ('.py',)
_COPIED_FILES = ('generation_config.json', 'preprocessor_config.json')
# A tokenizer's files in the forms transformers 4 and 5 save; fine-tuning changes none of them.
TOKENIZER_FILES = ('tokenizer_config.json', 'tokenizer.json', 'tokenizer.model', 'vocab.json', 'merges.txt',
                   'special_tokens_map.json', 'added_tokens.json', 'chat_template.jinja', 'chat_template.json')


# Written into each temporary output folder: whose it is, so a later run can tell one left by a killed process.
_OWNER_FILE = '.internvl-owner'
_log = logging.getLogger(__name__)


def _refuse_overlap(save_dir: str, protected: Dict[str, Optional[str]]) -> None:
    """OUT must not be, contain or lie inside anything the conversion reads: --overwrite would delete it."""
    target = os.path.realpath(save_dir)
    for label, path in protected.items():
        if not path or not os.path.exists(path):
            continue
        kept = os.path.realpath(path)
        relation = ('is' if kept == target else 'contains' if kept.startswith(target + os.sep)
                    else 'is inside' if target.startswith(kept + os.sep) else None)
        if relation:
            raise ValueError(f'refusing to write into {save_dir}: it {relation} {label} {path}; '
                             'choose an output folder apart from it')


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove_stale_temporaries(parent: str, name: str) -> None:
    """Temporary folders of this output left by a killed run on this machine (its owner process is gone)."""
    host = socket.gethostname()
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        owner = os.path.join(path, _OWNER_FILE)
        if not (entry.startswith((f'.{name}.tmp-', f'.{name}.old-')) and os.path.isfile(owner)):
            continue
        with open(owner, encoding='utf-8') as f:
            owner_host, _, pid = f.read().strip().partition(' ')
        if owner_host == host and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            _log.warning('removed %s, left by an interrupted conversion (process %s)', path, pid)


def _make_temporary(parent: str, prefix: str) -> str:
    folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
    with open(os.path.join(folder, _OWNER_FILE), 'w', encoding='utf-8') as f:
        f.write(f'{socket.gethostname()} {os.getpid()}\n')
    return folder


@contextlib.contextmanager
def atomic_output_dir(save_dir: str, overwrite: bool = False,
                      protected: Optional[Dict[str, Optional[str]]] = None) -> Iterator[str]:
    """Yields a temporary folder that replaces `save_dir` only when the block finishes without error.

    `protected` ({what: path}) names what the writer reads; OUT may not be, contain or lie inside any of it. Without
    `overwrite` a non-empty `save_dir` is never replaced, also when another process fills it meanwhile."""
    target = os.path.abspath(save_dir)
    _refuse_overlap(save_dir, protected or {})
    if os.path.isfile(target):
        raise FileExistsError(f'{save_dir} is a file; expected a folder to write the checkpoint into')
    if os.path.isdir(target) and os.listdir(target) and not overwrite:
        raise FileExistsError(f'{save_dir} exists and is not empty; pass --overwrite to replace it')
    parent, name = os.path.dirname(target), os.path.basename(target)
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_stale_temporaries(parent, name)
        tmp = _make_temporary(parent, f'.{name}.tmp-')
    except OSError as error:   # a file on the way, a read-only or full disk, no permission
        raise OSError(f'cannot write {save_dir}: {error.strerror} ({error.filename})') from None
    try:
        yield tmp
        os.remove(os.path.join(tmp, _OWNER_FILE))
        _make_readable(tmp)
        if overwrite and os.path.exists(target):
            old = _make_temporary(parent, f'.{name}.old-')
            os.rename(target, os.path.join(old, 'replaced'))
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _rename_into(tmp, target, save_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rename_into(tmp: str, target: str, save_dir: str) -> None:
    """rename(2) replaces an empty folder and fails on a non-empty one: atomic, so a writer that filled
    `save_dir` since the start keeps its files and this one fails."""
    try:
        os.rename(tmp, target)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(f'{save_dir} was filled by another process while this conversion ran; nothing '
                                  'was replaced (pass --overwrite to replace it)') from None
        raise


def _make_readable(folder: str) -> None:
    """mkdtemp creates 0700; give the result the modes a plain mkdir/open would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def write_safetensors(state_dict: StateDict, folder: str, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> List[str]:
    """model.safetensors, or model-0000k-of-0000n.safetensors + model.safetensors.index.json past `max_shard_bytes`."""
    from safetensors.torch import save_file
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor.clone()  # tied or viewed tensors must not share storage in safetensors
        size += nbytes
    if len(shards) == 1:
        names = ['model.safetensors']
    else:
        names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
        total = sum(t.numel() * t.element_size() for t in state_dict.values())
        index = {'metadata': {'total_size': total},
                 'weight_map': {key: name for name, shard in zip(names, shards) for key in shard}}
        write_json(os.path.join(folder, 'model.safetensors.index.json'), index)
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(folder, name), metadata={'format': 'pt'})
    return names


def write_json(path: str, data: Dict[str, Any]) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write('\n')


def copy_remote_code(base_dir: Optional[str], folder: str) -> List[str]:
    """Copies the base checkpoint's remote-code files (and generation/preprocessor configs); returns their names."""
    if not base_dir or not os.path.isdir(base_dir):
        return []
    copied = []
    for name in sorted(os.listdir(base_dir)):
        if name.endswith(_COPIED_SUFFIXES) or name in _COPIED_FILES:
            shutil.copy2(os.path.join(base_dir, name), os.path.join(folder, name))
            copied.append(name)
    return copied


def write_tokenizer(tokenizer: Any, base_dir: Optional[str], folder: str) -> None:
    """The base checkpoint's tokenizer files as they are, when it has them: saved again, transformers 5 would write
    its own format (`TokenizersBackend`, a list of `extra_special_tokens`), which transformers 4 cannot read, and
    the official toolchain runs on transformers 4. A tokenizer with no base folder (one assembled from parts)
    is saved."""
    if not base_dir or not os.path.isfile(os.path.join(base_dir, 'tokenizer_config.json')):
        tokenizer.save_pretrained(folder)
        return
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(base_dir, name)):
            shutil.copy2(os.path.join(base_dir, name), os.path.join(folder, name))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


def official_config(base_config: Dict[str, Any], network: InternVLChatModel, dtype: torch.dtype,
                    overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The base config.json with LoRA flags reset, the trained vocabulary size, and training-time settings."""
    config = copy.deepcopy(base_config)
    config.update(overrides or {})
    config['use_llm_lora'] = 0
    config['use_backbone_lora'] = 0
    config['torch_dtype'] = _dtype_name(dtype)
    config['llm_config']['vocab_size'] = network.language_model.get_input_embeddings().weight.shape[0]
    config['llm_config']['torch_dtype'] = _dtype_name(dtype)
    return config


def save_official(network: InternVLChatModel, base_config: Dict[str, Any], tokenizer: Any, save_dir: str,
                  dtype: torch.dtype = torch.bfloat16, base_dir: Optional[str] = None,
                  config_overrides: Optional[Dict[str, Any]] = None, overwrite: bool = False,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                  protected: Optional[Dict[str, str]] = None) -> List[str]:
    """The official layout: safetensors (+ index), config.json, tokenizer, and the base folder's remote code.

    Returns the names of the copied remote-code files (empty when the base folder has none)."""
    config = official_config(base_config, network, dtype, config_overrides)
    family = llm_family(config['llm_config'])
    weights = {k: v.to(dtype) for k, v in network.state_dict().items()}
    weights = network_to_official(weights, family, *language_shape(config['llm_config']))
    with atomic_output_dir(save_dir, overwrite, {'the base model folder': base_dir, **(protected or {})}) as tmp:
        write_safetensors(weights, tmp, max_shard_bytes)
        write_json(os.path.join(tmp, 'config.json'), config)
        write_tokenizer(tokenizer, base_dir, tmp)
        copied = copy_remote_code(base_dir, tmp)
    return copied


def hf_config(base_config: Dict[str, Any], network: InternVLChatModel, dtype: torch.dtype) -> Dict[str, Any]:
    """transformers' native InternVL config (`model_type: internvl`) for the same network."""
    if network.ps_version != 'v2' or network.select_layer != -1:
        raise ValueError(f'the native (-hf) layout supports ps_version v2 and select_layer -1, this model has '
                         f'ps_version {network.ps_version} and select_layer {network.select_layer}; use --format official')
    vision = base_config['vision_config']
    text = build_llm_config(base_config['llm_config']).to_dict()
    text['vocab_size'] = network.language_model.get_input_embeddings().weight.shape[0]
    text['torch_dtype'] = _dtype_name(dtype)
    vit = network.vision_model.config
    return {
        'architectures': ['InternVLForConditionalGeneration'],
        'model_type': 'internvl',
        'vision_config': {
            'model_type': 'internvl_vision',
            'hidden_size': vit.hidden_size,
            'num_hidden_layers': vit.num_hidden_layers,
            'num_attention_heads': vit.num_attention_heads,
            'intermediate_size': vit.intermediate_size,
            'attention_bias': vit.qkv_bias,
            'use_qk_norm': vit.qk_normalization,
            'norm_type': vit.norm_type,
            'layer_norm_eps': vit.layer_norm_eps,
            'image_size': [vit.image_size, vit.image_size],
            'patch_size': [vit.patch_size, vit.patch_size],
            'layer_scale_init_value': vision.get('initializer_factor', 1.0),
            'use_mean_pooling': True,
            'hidden_act': vit.hidden_act,
            'attention_dropout': 0.0,
            'hidden_dropout_prob': 0.0,
            'projection_dropout': 0.0,
        },
        'text_config': text,
        'image_token_id': network.img_context_token_id,
        'image_seq_length': network.tokens_per_tile,
        'downsample_ratio': network.downsample_ratio,
        'projector_hidden_act': 'gelu',
        'vision_feature_layer': -1,
        'vision_feature_select_strategy': 'default',
        'torch_dtype': _dtype_name(dtype),
        'tie_word_embeddings': bool(text.get('tie_word_embeddings', False)),
    }


# The tokenizer attributes transformers' InternVLProcessor reads.
HF_PROCESSOR_TOKENS = {'start_image_token': '<img>', 'end_image_token': '</img>',
                       'context_image_token': '<IMG_CONTEXT>', 'video_token': '<video>'}


def write_hf_processor(folder: str, base_config: Dict[str, Any], network: InternVLChatModel) -> None:
    """Processor files so that AutoProcessor (what LLaMA-Factory and vLLM use) tiles images as the model expects."""
    size = base_config.get('force_image_size') or network.vision_model.config.image_size
    write_json(os.path.join(folder, 'preprocessor_config.json'), {
        'image_processor_type': 'GotOcr2ImageProcessorFast', 'processor_class': 'InternVLProcessor',
        'crop_to_patches': bool(base_config.get('dynamic_image_size', True)),
        'min_patches': base_config.get('min_dynamic_patch', 1), 'max_patches': base_config.get('max_dynamic_patch', 12),
        'size': {'height': size, 'width': size}, 'resample': 3, 'do_resize': True, 'do_rescale': True,
        'rescale_factor': 1 / 255, 'do_normalize': True, 'image_mean': list(IMAGENET_MEAN),
        'image_std': list(IMAGENET_STD), 'do_convert_rgb': True})
    write_json(os.path.join(folder, 'processor_config.json'),
               {'processor_class': 'InternVLProcessor', 'image_seq_length': network.tokens_per_tile})
    tokenizer_config = os.path.join(folder, 'tokenizer_config.json')
    with open(tokenizer_config, encoding='utf-8') as f:
        config = json.load(f)
    config['extra_special_tokens'] = dict(HF_PROCESSOR_TOKENS)
    write_json(tokenizer_config, config)


def save_hf(network: InternVLChatModel, base_config: Dict[str, Any], tokenizer: Any, save_dir: str,
            dtype: torch.dtype = torch.bfloat16, base_dir: Optional[str] = None,
            config_overrides: Optional[Dict[str, Any]] = None, overwrite: bool = False,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, protected: Optional[Dict[str, str]] = None) -> None:
    """transformers' native InternVL layout with its processor files: AutoModelForImageTextToText and AutoProcessor
    load it (transformers >= 4.52). `config_overrides` (the training tiling) decide how the processor tiles."""
    config = hf_config(base_config, network, dtype)
    weights = network_to_hf({k: v.to(dtype) for k, v in network.state_dict().items()},
                            llm_family(base_config['llm_config']))
    with atomic_output_dir(save_dir, overwrite, {'the base model folder': base_dir, **(protected or {})}) as tmp:
        write_safetensors(weights, tmp, max_shard_bytes)
        write_json(os.path.join(tmp, 'config.json'), config)
        # No remote class is read here: InternLM2's SentencePiece tokenizer goes as the equal tokenizer.json.
        if isinstance(tokenizer, InternLM2Tokenizer):
            tokenizer.to_fast().save_pretrained(tmp)
        else:
            write_tokenizer(tokenizer, base_dir, tmp)
        write_hf_processor(tmp, {**base_config, **(config_overrides or {})}, network)
