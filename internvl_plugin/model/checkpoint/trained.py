"""Trained state saved during training (mmengine `iter_xxx.pth` files or DeepSpeed checkpoint folders), read
without running code from the files (safe_pickle)."""
import glob
import os
import pickle
import zipfile
from typing import Dict, List, Optional

import torch
from torch import nn

from . import safe_pickle
from .key_maps import StateDict
from .load import check_keys

_DEEPSPEED_MODEL_STATES = 'mp_rank_00_model_states.pt'
_ZERO3_MODEL_STATES = 'zero_pp_rank_*_mp_rank_00_model_states.pt'


def _strip_wrapper_prefix(state_dict: StateDict) -> StateDict:
    if state_dict and all(k.startswith('module.') for k in state_dict):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


def _state_folders(path: str) -> List[str]:
    """The folders below `path` that hold one DeepSpeed checkpoint's model states (a tag such as global_step500)."""
    found = glob.glob(os.path.join(path, '**', _DEEPSPEED_MODEL_STATES), recursive=True)
    found += glob.glob(os.path.join(path, '**', _ZERO3_MODEL_STATES), recursive=True)
    return sorted({os.path.dirname(p) for p in found})


def _pointed_folder(path: str, folders: List[str]) -> Optional[str]:
    """The checkpoint that DeepSpeed's `latest` (a tag) or mmengine's `last_checkpoint` (a path) names."""
    for pointer in ('latest', 'last_checkpoint'):
        pointer_file = os.path.join(path, pointer)
        if not os.path.isfile(pointer_file):
            continue
        with open(pointer_file, encoding='utf-8') as f:
            named = os.path.realpath(os.path.join(path, f.read().strip()))
        chosen = [d for d in folders if os.path.realpath(d) == named
                  or os.path.realpath(d).startswith(named + os.sep)]
        if len(chosen) == 1:
            return chosen[0]
        if chosen:  # a checkpoint folder with several tags: its own `latest` decides
            return _chosen_folder(named, chosen)
    return None


def _chosen_folder(path: str, folders: List[str]) -> str:
    if len(folders) == 1:
        return folders[0]
    chosen = _pointed_folder(path, folders)
    if chosen is None:
        listed = ', '.join(os.path.relpath(d, path) for d in folders)
        raise ValueError(f'{path} holds {len(folders)} DeepSpeed checkpoints ({listed}) and no latest / '
                         'last_checkpoint file naming one; pass the one to convert')
    return chosen


def _load_deepspeed_folder(path: str) -> StateDict:
    """ZeRO-1/2 keep the module in mp_rank_00_model_states.pt; ZeRO-3 partitions it across
    zero_pp_rank_*_mp_rank_00_model_states.pt, which DeepSpeed's zero_to_fp32 reassembles. A folder with several
    checkpoints (a work dir, or one with several tags) converts the one `latest` / `last_checkpoint` names."""
    folders = _state_folders(path)
    if not folders:
        raise FileNotFoundError(f'{path} is a folder without DeepSpeed model states ({_DEEPSPEED_MODEL_STATES} or '
                                f'{_ZERO3_MODEL_STATES}); expected an mmengine iter_xxx.pth file or a DeepSpeed '
                                'checkpoint folder')
    tag_dir = _chosen_folder(path, folders)
    whole = os.path.join(tag_dir, _DEEPSPEED_MODEL_STATES)
    if os.path.isfile(whole):
        return dict(_readable(whole)['module'])
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    with safe_pickle.torch_load_arguments(_through_safe_pickle):
        return dict(get_fp32_state_dict_from_zero_checkpoint(
            os.path.dirname(tag_dir), tag=os.path.basename(tag_dir), exclude_frozen_parameters=True))


def _through_safe_pickle(f: object, kwargs: dict) -> None:
    """DeepSpeed's zero_to_fp32 reads its files with torch.load(weights_only=False): route them through safe_pickle."""
    kwargs.update(weights_only=False, pickle_module=safe_pickle)


def _readable(path: str) -> object:
    """The unpickled file, or one line saying it is not a checkpoint (empty, cut short, another kind of file)."""
    if os.path.getsize(path) == 0:
        raise ValueError(f'{path}: the file is empty; expected a checkpoint (was its save interrupted?)')
    try:
        return safe_pickle.torch_load(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f'{path}: not a readable checkpoint ({reason}); expected an mmengine iter_xxx.pth or '
                         'DeepSpeed model states (was the save interrupted or the file cut short?)') from None


def load_trained_state(path: str) -> StateDict:
    """The trained tensors of a checkpoint: an mmengine .pth file or a DeepSpeed folder (ZeRO-1/2/3)."""
    if os.path.isdir(path):
        return _strip_wrapper_prefix(_load_deepspeed_folder(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    # mmengine checkpoints pickle training state (message hub, history buffers) beside the weights; safe_pickle
    # withholds whatever needs code to build, and the weights never do.
    checkpoint = _readable(path)
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path}: expected a checkpoint dict, found {type(checkpoint).__name__}')
    state = checkpoint.get('state_dict', checkpoint.get('module', checkpoint))
    withheld = sorted(k for k, v in state.items() if isinstance(v, safe_pickle.Withheld))
    if withheld:
        raise ValueError(f'{path}: state_dict entries {withheld[:5]} are objects the file builds with code, not '
                         'tensors; refusing to load them')
    return _strip_wrapper_prefix({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})


def apply_trained_state(model: nn.Module, trained: StateDict, source: str) -> None:
    """Loads `trained` into `model`, whose `state_dict()` lists exactly the keys that train. Any missing or
    unexpected key, or a shape that differs, is an error: a checkpoint from another config is never half-loaded."""
    expected: Dict[str, torch.Tensor] = model.state_dict()
    lora_trained, lora_expected = (any('lora_' in key for key in keys) for keys in (trained, expected))
    if lora_trained != lora_expected:
        held, built = ('LoRA adapters', 'trains without LoRA') if lora_trained else ('full weights', 'trains LoRA')
        raise ValueError(f'{source}: the checkpoint holds {held}, but the config {built}: a LoRA run and a full '
                         "fine-tune were mixed up; give the config the run was trained with (the work dir's copy)")
    check_keys(source, expected, trained, missing_label='missing trained keys')
    for key, tensor in trained.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(f'{source}: {key} has shape {tuple(tensor.shape)}, the model built by the config has '
                             f'{tuple(expected[key].shape)}')
    model.load_state_dict(trained, strict=False)
