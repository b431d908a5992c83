"""Every config in configs/ loads, matches the official recipe it claims, and builds and trains one step on a tiny
checkpoint of the same LLM family and ViT style (path overridden), so a typo in any of them fails here."""
import glob
import json
import os
import re

import pytest
import torch
from conftest import HAS_CPU_4BIT, needs_qwen3
from helpers import qa, write_jsonl
from mmengine.config import Config

from internvl_plugin.demo.shapes import write_split
from internvl_plugin.tiny import build_tiny_parts

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
CONFIGS = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, '*', '*.py')) if '_base_' not in p)

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
    'OpenGVLab/InternVL3-14B': ('qwen2', '300m', 14),
    'OpenGVLab/InternVL3-38B': ('qwen2', '6b', 38),
    'OpenGVLab/InternVL3-78B': ('qwen2', '6b', 78),
    'OpenGVLab/InternVL3_5-1B': ('qwen3', '300m', 1),
    'OpenGVLab/InternVL3_5-2B': ('qwen3', '300m', 2),
    'OpenGVLab/InternVL3_5-4B': ('qwen3', '300m', 4),
    'OpenGVLab/InternVL3_5-8B': ('qwen3', '300m', 8),
    'OpenGVLab/InternVL3_5-14B': ('qwen3', '300m', 14),
    'OpenGVLab/InternVL3_5-38B': ('qwen3', '6b', 38),
}
# Stochastic depth of the official full fine-tunes, by version and size.
DROP_PATH = {'v3': {1: 0.0, 2: 0.0, 8: 0.0, 14: 0.1, 38: 0.2, 78: 0.4},
             'v3_5': {1: 0.0, 2: 0.0, 4: 0.0, 8: 0.1, 14: 0.1, 38: 0.4}}
V1_2 = 'internvl_v1_2_hermes2_yi_34b_finetune.py'


def _mode(path: str) -> str:
    name = os.path.basename(path)
    return 'qlora' if name.endswith('qlora_finetune.py') else 'lora' if name.endswith('lora_finetune.py') else 'full'


def _params(paths):
    for path in paths:
        marks = [pytest.mark.skipif(not HAS_CPU_4BIT, reason='QLoRA on CPU needs bitsandbytes >= 0.46')] \
            if _mode(path) == 'qlora' else []
        if '_qwen3_' in os.path.basename(path):
            marks.append(needs_qwen3)
        yield pytest.param(path, id=os.path.relpath(path, CONFIG_DIR), marks=marks)


def _recipe(version: str, mode: str, billions: int) -> dict:
    """What the official scripts of a version set (LoRA as the 2.5 LoRA scripts, for every version after 2)."""
    lora_lr = 4e-5 if billions <= 8 else 2e-5
    stage = '2' if mode == 'qlora' else '1' if billions <= 8 else '3'
    if version == 'v3':
        return dict(lr=(1e-5 if billions == 1 else 2e-5) if mode == 'full' else lora_lr, max_length=16384,
                    max_dynamic_patch=12, weight_decay=0.05, total=128 if mode == 'full' else 16,
                    stage=('1' if billions <= 14 else '3') if mode == 'full' else stage)
    if version == 'v3_5':
        return dict(lr=8e-5 if mode == 'full' else lora_lr, max_length=32768 if mode == 'full' else 16384,
                    max_dynamic_patch=12, weight_decay=0.05, total=512 if mode == 'full' else 16,
                    stage='3' if mode == 'full' else stage)
    return dict(lr=lora_lr, max_length=8192 if version == 'v2_5' else 4096, max_dynamic_patch=6,
                weight_decay=0.01 if billions <= 4 else 0.05, total=128 if mode == 'full' else 16, stage=stage)


def test_the_tree_has_every_model_and_mode():
    names = {os.path.relpath(p, CONFIG_DIR) for p in CONFIGS}
    assert len(names) == 3 * len(RELEASED) + 1 and f'v1_2/{V1_2}' in names
    for version, sizes in {'v1_5': 3, 'v2': 7, 'v2_5': 7, 'v3': 6, 'v3_5': 6}.items():
        for mode in ('_lora_finetune.py', '_qlora_finetune.py'):
            assert sum(n.startswith(version + '/') and n.endswith(mode) for n in names) == sizes


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
        assert cfg.model.llm_lora == dict(r=16, lora_alpha=32, lora_dropout=0.05) and cfg.model.freeze_mlp
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
