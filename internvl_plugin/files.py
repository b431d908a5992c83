"""Checkpoint folders as files: hub ids, JSON with positions in errors, the tokenizer. Both wings read these."""
import importlib
import json
import os
import re
from typing import Any, Dict, List

_REPO_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')
# Tokens every InternVL tokenizer has; an LLM's own tokenizer gets them when a model is assembled from parts.
INTERNVL_SPECIAL_TOKENS = ['<img>', '</img>', '<IMG_CONTEXT>', '<quad>', '</quad>', '<ref>', '</ref>', '<box>',
                           '</box>']


def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; a hub repo id (`OpenGVLab/InternVL2_5-8B`) through huggingface_hub's cache/download."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise NotADirectoryError(f"model_path '{name_or_path}' is a file; expected a checkpoint folder")
    if not _REPO_ID.match(name_or_path):
        raise FileNotFoundError(f"model_path '{name_or_path}' does not exist")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:  # not cached (yet): try the hub itself below
        pass
    try:
        return snapshot_download(name_or_path)
    except Exception as error:
        raise FileNotFoundError(
            f"model_path '{name_or_path}' is neither a local folder nor in the Hugging Face cache, and downloading it "
            f'failed ({type(error).__name__}); download it where the hub is reachable or pass a local folder') from None


def read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding='utf-8-sig') as f:  # a byte-order mark (some Windows editors write one) is fine
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f'{path} does not exist') from None
    except json.JSONDecodeError as error:
        raise ValueError(f'{path}:{error.lineno}: invalid JSON ({error.msg})') from None


def remote_code_files(auto_map: Any) -> List[str]:
    """The .py files an `auto_map` ({'AutoTokenizer': ['tokenization_x.Cls', None], ...}) would import."""
    entries = [v for value in (auto_map or {}).values() for v in (value if isinstance(value, list) else [value])]
    return sorted({entry.split('--')[-1].rsplit('.', 1)[0] + '.py' for entry in entries if isinstance(entry, str)})


def load_tokenizer(folder: str, add_internvl_tokens: bool = False, trust_remote_code: bool = False) -> Any:
    """The checkpoint's tokenizer. InternLM2's (remote code in every released checkpoint) is read from its
    SentencePiece model by the plugin's own class, on any transformers version; other tokenizers load with
    transformers. A tokenizer whose config names remote code (`auto_map`) is refused unless `trust_remote_code`
    is given: the error names the files that would run. `add_internvl_tokens` adds the InternVL special tokens an
    LLM's own tokenizer lacks."""
    from transformers import AutoTokenizer

    from .internlm2_tokenizer import INTERNLM2_TOKENIZER_CLASSES, VOCAB_FILE, InternLM2Tokenizer
    tokenizer_config = os.path.join(folder, 'tokenizer_config.json')
    config = read_json(tokenizer_config) if os.path.isfile(tokenizer_config) else {}
    sentencepiece_model = os.path.join(folder, VOCAB_FILE)
    if config.get('tokenizer_class') in INTERNLM2_TOKENIZER_CLASSES and os.path.isfile(sentencepiece_model):
        tokenizer = InternLM2Tokenizer.from_pretrained(folder)
    elif 'auto_map' in config and not trust_remote_code:
        files = ', '.join(remote_code_files(config['auto_map']))
        raise ValueError(f'{tokenizer_config}: auto_map names remote code ({files} in {folder}) that loading this '
                         'tokenizer would run; pass trust_remote_code=True (in the model and dataset dicts, or '
                         '--trust-remote-code) if you trust it')
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if add_internvl_tokens:
        tokenizer.add_tokens(INTERNVL_SPECIAL_TOKENS, special_tokens=True)
    return tokenizer


def plain_config(value: Any) -> Any:
    """ConfigDict / lazy config values -> plain Python containers."""
    if isinstance(value, dict):
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_config(v) for v in value)
    return value


def build_from_config(spec: Any) -> Any:
    """An object as is, or an MMEngine/XTuner-style dict whose `type` builds it with the other keys: a class or a
    function, a lazy import from a config file, or a dotted name (as in the config xtuner saves to the work dir)."""
    if not isinstance(spec, dict):
        return spec
    kwargs = dict(spec)
    builder = kwargs.pop('type')
    if isinstance(builder, str):
        module, _, name = builder.rpartition('.')
        builder = getattr(importlib.import_module(module), name)
    builder = builder.build() if hasattr(builder, 'build') else builder
    return builder(**kwargs)


def train_dataset_config(cfg: Any) -> Dict[str, Any]:
    """The training config's InternVL dataset settings as a plain dict (unwrapped from a PackedDataset)."""
    dataset = plain_config(dict(cfg.get('train_dataloader', {}).get('dataset', {}))) if hasattr(cfg, 'get') else {}
    inner = dataset.get('dataset')
    return dict(inner) if isinstance(inner, dict) else dataset
