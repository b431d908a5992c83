"""Every config in configs/ loads, matches the official recipe it claims, and builds and trains one step on a tiny
checkpoint of the same LLM family and ViT style (path overridden), so a typo in any of them fails here."""
import glob
import json
import os
import re

import pytest
import torch
from conftest import HAS_CPU_4BIT, needs_gpt_oss, needs_qwen3
from helpers import qa, write_jsonl
from mmengine.config import Config

from internvl_plugin.demo.shapes import write_split
from internvl_plugin.tiny import build_tiny_parts

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, '*', 'internvl_*.py')))
MPO_CONFIGS = [path for path in ALL_CONFIGS if path.endswith('mpo.py')]   # preference training
CONFIGS = [path for path in ALL_CONFIGS if path not in MPO_CONFIGS]       # supervised fine-tuning

# The released checkpoint a config names -> (LLM family, ViT style, billions of parameters) of its tiny stand-in.
RELEASED = {
    'OpenGVLab/Mini-InternVL-Chat-2B-V1-5': ('internlm2', '300m', 2),
    'OpenGVLab/Mini-InternVL-Chat-4B-V1-5': ('phi3', '300m', 4),
    'OpenGVLab/InternVL-Chat-V1-5': ('internlm2', '6b', 26),
    'OpenGVLab/InternVL2-1B': ('qwen2', '300m', 1),
    'OpenGVLab/InternVL2-2B': ('internlm2', '300m', 2),
    'OpenGVLab/InternVL2-4B': ('phi3', '300m', 4),
    'OpenGVLab/InternVL2-8B': ('internlm2', '300m', 8),
    'OpenGVLab/InternVL2-26B': ('internlm2', '6b', 26),
    'OpenGVLab/InternVL2-40B': ('llama', '6b', 40),
    'OpenGVLab/InternVL2-Llama3-76B': ('llama', '6b', 76),
    'OpenGVLab/InternVL2_5-1B': ('qwen2', '300m', 1),
    'OpenGVLab/InternVL2_5-2B': ('internlm2', '300m', 2),
    'OpenGVLab/InternVL2_5-4B': ('qwen2', '300m', 4),
    'OpenGVLab/InternVL2_5-8B': ('internlm2', '300m', 8),
    'OpenGVLab/InternVL2_5-26B': ('internlm2', '6b', 26),
    'OpenGVLab/InternVL2_5-38B': ('qwen2', '6b', 38),
    'OpenGVLab/InternVL2_5-78B': ('qwen2', '6b', 78),
    'OpenGVLab/InternVL3-1B': ('qwen2', '300m', 1),
    'OpenGVLab/InternVL3-2B': ('qwen2', '300m', 2),
    'OpenGVLab/InternVL3-8B': ('qwen2', '300m', 8),
    'OpenGVLab/InternVL3-9B': ('internlm2', '300m', 9),   # InternLM3-8B, shipped as an InternLM2 model
    'OpenGVLab/InternVL3-14B': ('qwen2', '300m', 14),
    'OpenGVLab/InternVL3-38B': ('qwen2', '6b', 38),
    'OpenGVLab/InternVL3-78B': ('qwen2', '6b', 78),
    'OpenGVLab/InternVL3_5-1B': ('qwen3', '300m', 1),
    'OpenGVLab/InternVL3_5-2B': ('qwen3', '300m', 2),
    'OpenGVLab/InternVL3_5-4B': ('qwen3', '300m', 4),
    'OpenGVLab/InternVL3_5-8B': ('qwen3', '300m', 8),
    'OpenGVLab/InternVL3_5-14B': ('qwen3', '300m', 14),
    'OpenGVLab/InternVL3_5-38B': ('qwen3', '6b', 38),
    'OpenGVLab/InternVL3_5-30B-A3B': ('qwen3_moe', '300m', 30),
    'OpenGVLab/InternVL3_5-241B-A28B': ('qwen3_moe', '6b', 241),
    'OpenGVLab/InternVL3_5-GPT-OSS-20B-A4B-Preview': ('gpt_oss', '300m', 20),
}
# Stochastic depth of the official full fine-tunes, by version and size.
DROP_PATH = {'v3': {1: 0.0, 2: 0.0, 8: 0.0, 9: 0.0, 14: 0.1, 38: 0.2, 78: 0.4},
             'v3_5': {1: 0.0, 2: 0.0, 4: 0.0, 8: 0.1, 14: 0.1, 20: 0.1, 30: 0.1, 38: 0.4, 241: 0.4}}
V1_2 = 'internvl_v1_2_hermes2_yi_34b_finetune.py'


def _mode(path: str) -> str:
    name = os.path.basename(path)
    return 'qlora' if '_qlora_' in name else 'lora' if '_lora_' in name else 'full'


def _kind(path: str) -> tuple:
    """What a config's step depends on beyond its values: its version (template, loss, packing), LLM family and
    mode. Configs of one kind differ in sizes and settings, which the recipe tests check once."""
    if path.endswith(V1_2):
        family = 'llama'
    else:   # read from the text: parsing every config while collecting would take a minute
        family = RELEASED[re.search(r"^path = '([^']+)'", open(path).read(), re.M).group(1)][0]
    return os.path.basename(os.path.dirname(path)), family, _mode(path)


def _first_of_each_kind(paths) -> set:
    """The representative of each kind: the first in name order."""
    firsts = {}
    for path in paths:
        firsts.setdefault(_kind(path), path)
    return set(firsts.values())


def _params(paths):
    """Every config; in the worlds other than the newest (scripts/test.sh) only the first of each kind."""
    representatives = _first_of_each_kind(paths)
    for path in paths:
        marks = [pytest.mark.skipif(not HAS_CPU_4BIT, reason='QLoRA on CPU needs bitsandbytes >= 0.46')] \
            if _mode(path) == 'qlora' else []
        if path not in representatives:
            marks.append(pytest.mark.newest_only)
        if '_qwen3_' in os.path.basename(path):
            marks.append(needs_qwen3)
        if '_gpt_oss_' in os.path.basename(path):
            marks.append(needs_gpt_oss)
        yield pytest.param(path, id=os.path.relpath(path, CONFIG_DIR), marks=marks)


def _recipe(version: str, mode: str, billions: int) -> dict:
    """What the official scripts of a version set (LoRA as the 2.5 LoRA scripts, for every version after 2)."""
    lora_lr = 4e-5 if billions <= 9 else 2e-5
    stage = '2' if mode == 'qlora' else '1' if billions <= 9 else '3'
    if version == 'v3':
        return dict(lr=(1e-5 if billions == 1 else 2e-5) if mode == 'full' else lora_lr, max_length=16384,
                    max_dynamic_patch=12, weight_decay=0.05, total=128 if mode == 'full' else 16,
                    stage=('1' if billions <= 14 else '3') if mode == 'full' else stage)
    if version == 'v3_5':
        full_lr = 2e-5 if billions > 200 else 8e-5
        return dict(lr=full_lr if mode == 'full' else lora_lr, max_length=32768 if mode == 'full' else 16384,
                    max_dynamic_patch=12, weight_decay=0.05, total=512 if mode == 'full' else 16,
                    stage='3' if mode == 'full' else stage)
    return dict(lr=lora_lr, max_length=8192 if version == 'v2_5' else 4096, max_dynamic_patch=6,
                weight_decay=0.01 if billions <= 4 else 0.05, total=128 if mode == 'full' else 16, stage=stage)


def test_the_tree_has_every_model_and_mode():
    names = {os.path.relpath(p, CONFIG_DIR) for p in CONFIGS}
    assert len(names) == 3 * len(RELEASED) + 1 and f'v1_2/{V1_2}' in names
    for version, sizes in {'v1_5': 3, 'v2': 7, 'v2_5': 7, 'v3': 7, 'v3_5': 9}.items():
        for mode in ('_lora_finetune.py', '_qlora_finetune.py'):
            assert sum(n.startswith(version + '/') and n.endswith(mode) for n in names) == sizes


@pytest.mark.newest_only
@pytest.mark.parametrize('path', [pytest.param(p, id=os.path.relpath(p, CONFIG_DIR)) for p in CONFIGS])
def test_config_follows_the_official_recipe(path):
    cfg = Config.fromfile(path)
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ  # parsing a config weakens no torch.load
    text = open(path).read()
    mode = _mode(path)
    billions = 34 if path.endswith(V1_2) else RELEASED[cfg.path][2]
    version = os.path.basename(os.path.dirname(path))
    packed = version == 'v3_5' and mode == 'full'
    assert cfg.model.use_activation_checkpointing and cfg.model.freeze_visual_encoder == (not packed)
    assert cfg.optim_wrapper.clip_grad.max_norm == 1.0 and cfg.warmup_ratio == 0.03 and cfg.max_epochs == 1
    assert cfg.optim_wrapper.optimizer.betas == (0.9, 0.999)
    if path.endswith(V1_2):
        assert (cfg.lr, cfg.max_length, cfg.weight_decay) == (1e-5, 2048, 0.05)
        recipe = dict(total=512, stage='1' if billions <= 8 else '3')
    else:
        recipe = _recipe(version, mode, billions)
        assert (cfg.lr, cfg.max_length, cfg.max_dynamic_patch, cfg.weight_decay) == \
            (recipe['lr'], recipe['max_length'], recipe['max_dynamic_patch'], recipe['weight_decay'])
    if mode == 'full':
        assert 'llm_lora' not in cfg.model and not cfg.model.freeze_llm and not cfg.model.freeze_mlp
        if version in DROP_PATH:
            assert cfg.model.drop_path_rate == DROP_PATH[version][billions]
    else:
        family = RELEASED[cfg.path][0]   # no dropout where LoRA goes on 3-D expert tensors
        dropout = 0.0 if family == 'gpt_oss' or (family == 'qwen3_moe' and mode == 'lora') else 0.05
        assert cfg.model.llm_lora == dict(r=16, lora_alpha=32, lora_dropout=dropout) and cfg.model.freeze_mlp
        assert cfg.model.get('quantization_llm', False) == (mode == 'qlora')
    assert cfg.model.get('loss_reduction', 'token') == ('square' if version == 'v3_5' else 'token')
    # The global batch comment agrees with the settings, and with the recipe.
    gpus, per_gpu, accumulate, total = map(int, re.search(
        r'accumulative_counts = \d+ +# (\d+) GPUs? x (\d+) x (\d+) = (\d+)', text).groups())
    assert (per_gpu, accumulate) == (cfg.batch_size, cfg.accumulative_counts) and gpus * per_gpu * accumulate == total
    assert total == recipe['total']
    dataset = cfg.train_dataloader.dataset
    if packed:   # the official InternVL3.5 packing: 32768 tokens and 96 tiles a pack, in random order
        assert (dataset.max_packed_tokens, dataset.max_packed_tiles) == (32768, 96)
        assert cfg.train_dataloader.sampler.shuffle
        dataset = dataset.dataset
    else:
        assert cfg.train_dataloader.sampler.per_device_batch_size == cfg.batch_size * cfg.accumulative_counts
    assert dataset.length_workers == cfg.train_dataloader.num_workers   # lengths in parallel
    assert set(re.findall(r'--deepspeed deepspeed_zero(\d)', text)) == {recipe['stage']}
    assert (gpus == 1) == (mode == 'qlora')


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    """A meta JSON with single-image, multi-image and text-only samples."""
    folder = tmp_path_factory.mktemp('data')
    shapes = write_split(str(folder), 'train', 3, seed=0)
    extra = write_jsonl(folder / 'extra.jsonl', [
        qa('What is 2 + 2?', '4'),
        qa('<image>\n<image>\nSame colour?', 'No.', image=['images/train_00000.png', 'images/train_00001.png']),
    ])
    meta = folder / 'meta.json'
    meta.write_text(json.dumps({'shapes': {'root': str(folder), 'annotation': shapes},
                                'extra': {'root': str(folder), 'annotation': extra, 'repeat_time': 2}}))
    return str(meta)


def _build_and_step(cfg: Config, work_dir: str) -> float:
    """The runner's own builders (model, dataset + sampler + collate, optimizer, schedulers), then one step."""
    from mmengine.runner import Runner
    cfg.work_dir = work_dir
    cfg.train_dataloader.num_workers = 0
    runner = Runner.from_cfg(cfg)
    loader = runner.build_dataloader(cfg.train_dataloader)
    optim_wrapper = runner.optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    schedulers = runner.build_param_scheduler(cfg.param_scheduler)
    assert [type(s).__name__ for s in schedulers] == ['WarmupLR', 'CosineLR']
    losses = runner.model.train_step(next(iter(loader)), optim_wrapper)
    return losses['loss'].item()


@pytest.mark.parametrize('path', list(_params(CONFIGS)))
def test_config_builds_and_trains_a_step_on_a_tiny_checkpoint(path, tiny_checkpoint, tiny_data, tmp_path):
    cfg = Config.fromfile(path)
    dataset = cfg.train_dataloader.dataset
    dataset = dataset.get('dataset', dataset)   # the samples inside a PackedDataset
    if path.endswith(V1_2):
        vision, llm = build_tiny_parts(str(tmp_path / 'parts'), llm='llama', vit='6b')
        cfg.model.update(vision_model_path=vision, llm_path=llm)
        dataset.tokenizer = llm
    else:
        family, vit, _ = RELEASED[cfg.path]
        cfg.model.model_path = dataset.model_path = tiny_checkpoint(family, vit)
    dataset.meta_path = tiny_data
    cfg.train_dataloader.batch_size = 2
    loss = _build_and_step(cfg, str(tmp_path / 'work'))
    assert torch.isfinite(torch.tensor(loss)) and loss > 0


# The official MPO scripts (internvl_chat/shell/internvl2.0_mpo, internvl2.5_mpo, internvl3.0/mpo,
# internvl_chat_gpt_oss/shell/internvl3_5_qwen3): the full run's lr per version, and per size (billions)
# max_seq_length, drop path, ZeRO stage and global batch.
MPO_LR = {'v2': 5e-6, 'v2_5': 1e-6, 'v3': 2e-7, 'v3_5': 2e-7}
MPO_SIZES = {
    'v2': {8: (6144, 0.1, '1', 256)},
    'v2_5': {1: (8192, 0.1, '1', 256), 2: (8192, 0.1, '1', 256), 4: (8192, 0.1, '1', 256), 8: (8192, 0.1, '1', 256),
             26: (8192, 0.4, '3', 256), 38: (8192, 0.4, '3', 512), 78: (8192, 0.4, '3', 512)},
    'v3': {1: (12288, 0.1, '1', 256), 2: (12288, 0.1, '1', 256), 8: (12288, 0.1, '3', 256), 9: (12288, 0.1, '3', 256),
           14: (12288, 0.1, '3', 256), 38: (8192, 0.4, '3', 512), 78: (8192, 0.4, '3', 512)},
    'v3_5': {1: (16384, 0.0, '3', 256), 2: (16384, 0.0, '3', 256), 4: (16384, 0.0, '3', 256), 8: (16384, 0.1, '3', 256),
             14: (16384, 0.1, '3', 256), 38: (16384, 0.4, '3', 256), 20: (16384, 0.1, '3', 256),
             30: (16384, 0.1, '3', 256), 241: (16384, 0.4, '3', 256)},
}


def test_every_official_mpo_size_has_full_lora_and_qlora_configs():
    found = {}
    for path in MPO_CONFIGS:
        version = os.path.basename(os.path.dirname(path))
        found.setdefault((version, _mode(path)), set()).add(RELEASED[Config.fromfile(path).path][2])
    for version, sizes in MPO_SIZES.items():
        for mode in ('full', 'lora', 'qlora'):
            assert found[version, mode] == set(sizes), (version, mode)


@pytest.mark.newest_only
@pytest.mark.parametrize('path', [pytest.param(p, id=os.path.relpath(p, CONFIG_DIR)) for p in MPO_CONFIGS])
def test_preference_config_follows_the_official_mpo_recipe(path):
    cfg = Config.fromfile(path)
    text = open(path).read()
    mode, version = _mode(path), os.path.basename(os.path.dirname(path))
    billions = RELEASED[cfg.path][2]
    max_length, drop_path, stage, global_batch = MPO_SIZES[version][billions]
    assert str(getattr(cfg.model.type, '__name__', cfg.model.type)).endswith('InternVLPreference')
    assert (cfg.beta, dict(cfg.loss_weights)) == (0.1, {'sigmoid': 0.8, 'bco_pair': 0.2, 'sft': 1.0})
    assert (cfg.model.beta, dict(cfg.model.loss_weights)) == (cfg.beta, dict(cfg.loss_weights))
    assert (cfg.max_length, cfg.max_dynamic_patch, cfg.weight_decay, cfg.max_epochs) == (max_length, 12, 0.05, 1)
    assert cfg.optim_wrapper.clip_grad.max_norm == 1.0 and cfg.warmup_ratio == 0.03
    gpus, per_gpu, accumulate, total = map(int, re.search(
        r'accumulative_counts = \d+ +# (\d+) GPUs? x (\d+) x (\d+) = (\d+)', text).groups())
    assert (per_gpu, accumulate) == (cfg.batch_size, cfg.accumulative_counts)
    assert gpus * per_gpu * accumulate == total == global_batch
    if mode == 'full':   # everything trains against a frozen copy, as the official runs
        assert cfg.lr == MPO_LR[version] and cfg.model.reference == 'copy'
        assert not (cfg.model.freeze_visual_encoder or cfg.model.freeze_mlp or cfg.model.freeze_llm)
        assert cfg.model.drop_path_rate == drop_path
        assert set(re.findall(r'--deepspeed deepspeed_zero(\d)', text)) == {stage}
    else:
        assert cfg.lr == pytest.approx(10 * MPO_LR[version]) and cfg.model.reference == 'adapters'
        assert cfg.model.freeze_visual_encoder and cfg.model.freeze_mlp
        sft = Config.fromfile(path.replace('_mpo.py', '_finetune.py'))   # the same model's SFT LoRA settings
        assert cfg.model.llm_lora == sft.model.llm_lora and cfg.model.llm_lora['r'] == 16
        assert cfg.model.get('quantization_llm', False) == (mode == 'qlora') and (gpus == 1) == (mode == 'qlora')
    assert cfg.train_dataloader.collate_fn.pack_pairs and cfg.train_dataloader.sampler.shuffle


@pytest.fixture(scope='module')
def tiny_pairs(tmp_path_factory):
    """A meta JSON of preference pairs: single-image, multi-image and text-only."""
    folder = tmp_path_factory.mktemp('pairs')
    write_split(str(folder), 'train', 2, seed=0)
    pairs = write_jsonl(folder / 'pairs.jsonl', [
        {'image': 'images/train_00000.png', 'question': 'What colour?', 'chosen': 'Red.', 'rejected': 'Blue.'},
        {'image': ['images/train_00000.png', 'images/train_00001.png'], 'question': '<image>\n<image>\nSame?',
         'chosen': 'No.', 'rejected': 'Yes, they are.'},
        {'question': 'What is 2 + 2?', 'chosen': '4', 'rejected': '5'}])
    meta = folder / 'meta.json'
    meta.write_text(json.dumps({'pairs': {'root': str(folder), 'annotation': pairs}}))
    return str(meta)


@pytest.mark.parametrize('path', list(_params(MPO_CONFIGS)))
def test_preference_config_builds_and_trains_a_step_on_a_tiny_checkpoint(path, tiny_checkpoint, tiny_pairs, tmp_path):
    cfg = Config.fromfile(path)
    family, vit, _ = RELEASED[cfg.path]
    cfg.model.model_path = cfg.train_dataloader.dataset.model_path = tiny_checkpoint(family, vit)
    cfg.train_dataloader.dataset.meta_path = tiny_pairs
    cfg.train_dataloader.batch_size = 3
    loss = _build_and_step(cfg, str(tmp_path / 'work'))
    assert torch.isfinite(torch.tensor(loss)) and loss > 0
