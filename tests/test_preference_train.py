"""Preference configs under the real `xtuner train` CLI (tiny checkpoint and pairs swapped in): LoRA against the
network with its adapters off and full fine-tuning against a frozen copy; the metrics reach the logs, the checkpoint
carries the reward shift, and the result converts with tools/convert_to_official.py into a model that chats."""
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import save_image, write_jsonl
from xtuner_cli import REPO, checkpoints, saved_config, xtuner_train

from internvl_plugin import InternVL_V1_5
from internvl_plugin.chat import ChatSession
from internvl_plugin.model.checkpoint.trained import load_trained_state

LORA = 'configs/v2_5/internvl_v2_5_qwen2_5_0_5b_lora_mpo.py'
FULL = 'configs/v2_5/internvl_v2_5_qwen2_5_0_5b_mpo.py'
METRICS = ('term_sigmoid', 'term_bco_pair', 'term_sft', 'rewards_chosen', 'rewards_rejected', 'rewards_margin',
           'rewards_accuracy', 'reward_shift')


@pytest.fixture(scope='module')
def pairs_meta(tmp_path_factory):
    folder = tmp_path_factory.mktemp('pairs')
    for index in range(3):
        save_image(folder / f'{index}.png', 300 + 100 * index, 300, seed=index)
    pairs = [{'image': f'{i % 3}.png', 'question': f'What is shape {i}?', 'chosen': 'A red square.',
              'rejected': 'A blue circle, surely.'} for i in range(6)]
    pairs.append({'question': 'What is 2 + 2?', 'chosen': '4', 'rejected': '5'})
    pairs.append({'image': ['0.png', '1.png'], 'question': '<image>\n<image>\nSame?', 'chosen': 'No.',
                  'rejected': 'Yes.'})
    meta = folder / 'meta.json'
    meta.write_text(json.dumps({'pairs': {'root': str(folder), 'annotation': write_jsonl(folder / 'p.jsonl', pairs)}}))
    return str(meta)


def _options(model_path: str, meta_path: str) -> dict:
    return {'model.model_path': model_path, 'train_dataloader.dataset.model_path': model_path,
            'train_dataloader.dataset.meta_path': meta_path, 'train_dataloader.dataset.max_dynamic_patch': 2,
            'train_dataloader.num_workers': 0, 'train_dataloader.batch_size': 2,
            'optim_wrapper.accumulative_counts': 1, 'optim_wrapper.optimizer.lr': 1e-3,
            'default_hooks.logger.interval': 1, 'env_cfg.dist_cfg.backend': 'gloo'}


def _scalars(work_dir: str) -> list:
    import glob
    (path,) = glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        return [json.loads(line) for line in f]


def _convert_and_chat(work: str, config: str, checkpoint: str, out: str) -> InternVL_V1_5:
    result = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'convert_to_official.py'),
                             saved_config(work, config), checkpoint, out, '--dtype', 'float32'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = ChatSession(out, device='cpu').ask('What is 2 + 2?', max_new_tokens=3)
    assert isinstance(answer, str)
    return InternVL_V1_5(out, torch_dtype='float32', use_activation_checkpointing=False)


def _llm_weight(model: InternVL_V1_5) -> torch.Tensor:
    return model.model.language_model.state_dict()['model.layers.0.mlp.down_proj.weight'].float()


@pytest.mark.parametrize('config', [LORA, FULL], ids=['lora', 'full'])
def test_xtuner_trains_a_preference_config_logs_its_metrics_and_converts(tiny_checkpoint, pairs_meta, tmp_path,
                                                                         config):
    base = tiny_checkpoint('qwen2')
    work = str(tmp_path / 'work')
    log = xtuner_train(config, work, _options(base, pairs_meta))
    found = checkpoints(work)
    assert found and found[-1].endswith('iter_4.pth'), log[-3000:]
    records = [record for record in _scalars(work) if 'rewards_accuracy' in record]
    assert len(records) == 4 and all(name in records[0] for name in METRICS), records[:1]
    assert records[0]['term_sigmoid'] == pytest.approx(0.6931, abs=1e-2)   # policy == reference at step 1
    assert records[-1]['rewards_margin'] > records[0]['rewards_margin']     # it learns to prefer chosen
    trained = load_trained_state(found[-1])
    assert float(trained['reward_shift.count']) == 4
    lora = config == LORA
    assert all(('lora_' in key) == lora for key in trained if not key.startswith('reward_shift.'))
    assert not any(key.startswith('reference_model.') for key in trained)
    converted = _convert_and_chat(work, config, found[-1], str(tmp_path / 'converted'))
    assert not torch.allclose(_llm_weight(converted), _llm_weight(InternVL_V1_5(base, torch_dtype='float32')),
                              atol=1e-6)
