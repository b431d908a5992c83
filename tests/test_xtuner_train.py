"""The real `xtuner train` CLI on the shipped configs (tiny checkpoint and data swapped in): full, LoRA, QLoRA,
DeepSpeed ZeRO-2 in two processes, and --resume after the process is killed; each result converts with
tools/convert_to_official.py into a model that loads. Each run must exit 0 and leave its checkpoint."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import needs_cpu_4bit, needs_qwen3
from safetensors.torch import load_file
from xtuner_cli import (REPO, checkpoints, inside_packed_dataset, packed_config, saved_config, tiny_options,
                        xtuner_command, xtuner_env, xtuner_train)

from internvl_plugin import InternVL_V1_5
from internvl_plugin.demo.shapes import write_split
from internvl_plugin.model.checkpoint.trained import load_trained_state

FULL = 'configs/v2_5/internvl_v2_5_qwen2_5_0_5b_finetune.py'
LORA = 'internvl_v2_internlm2_2b_lora_finetune'  # by name, as XTuner's guide does: the name of XTuner's own config
QLORA = 'configs/v2_5/internvl_v2_5_internlm2_5_26b_qlora_finetune.py'
ZERO2 = 'configs/v2_5/internvl_v2_5_internlm2_5_8b_finetune.py'


def _shapes(folder, repeat_time: int) -> str:
    annotation = write_split(str(folder), 'train', 20, seed=0)
    meta = folder / 'meta.json'
    meta.write_text(json.dumps({'shapes': {'root': str(folder), 'annotation': annotation,
                                           'repeat_time': repeat_time}}))
    return str(meta)


@pytest.fixture(scope='module')
def shapes_meta(tmp_path_factory):
    """20 images x 2 repeats = 40 samples: 20 iterations at batch 2, long enough to kill a run midway."""
    return _shapes(tmp_path_factory.mktemp('shapes'), 2)


@pytest.fixture(scope='module')
def many_shapes_meta(tmp_path_factory):
    """20 images x 10 repeats = 200 one-tile samples: more than one 96-tile pack."""
    return _shapes(tmp_path_factory.mktemp('many_shapes'), 10)


def _trained(work_dir: str, log: str) -> str:
    found = checkpoints(work_dir)
    assert found, f'no checkpoint in {work_dir}; xtuner output:\n{log[-3000:]}'
    return found[-1]


def _convert(work_dir: str, config: str, checkpoint: str, out: str) -> InternVL_V1_5:
    result = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'convert_to_official.py'),
                             saved_config(work_dir, config), checkpoint, out, '--dtype', 'float32'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, 'config.json')) and glob.glob(os.path.join(out, '*.safetensors'))
    return InternVL_V1_5(out, torch_dtype='float32', use_activation_checkpointing=False)


def _llm_weight(model: InternVL_V1_5) -> torch.Tensor:
    return model.model.language_model.state_dict()['model.layers.0.mlp.down_proj.weight'].float()


def test_full_finetune_trains_mlp_and_llm_and_converts(tiny_checkpoint, shapes_meta, tmp_path):
    """From a copy of the config made as XTuner users do (`xtuner copy-cfg NAME DIR`), in a folder of its own."""
    base = tiny_checkpoint('qwen2')
    work = str(tmp_path / 'work')
    name = os.path.basename(FULL)[:-3]
    copied = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'xtuner'), 'copy-cfg', name,
                             str(tmp_path / 'mine')], capture_output=True, text=True, timeout=300)
    assert copied.returncode == 0, copied.stderr[-2000:]
    config = str(tmp_path / 'mine' / f'{name}_copy.py')
    with open(config) as mine, open(os.path.join(REPO, FULL)) as shipped:
        assert mine.read() == shipped.read()
    log = xtuner_train(config, work, tiny_options(base, shapes_meta, **{'optim_wrapper.optimizer.lr': 1e-3}))
    checkpoint = _trained(work, log)
    assert checkpoint.endswith('iter_20.pth') and 'loss:' in log
    trained = load_trained_state(checkpoint)
    assert any(k.startswith('model.mlp1.') for k in trained) and not any('vision_model' in k for k in trained)
    converted = _convert(work, config, checkpoint, str(tmp_path / 'converted'))
    assert torch.allclose(converted.model.mlp1[1].weight, trained['model.mlp1.1.weight'].float())
    assert not torch.equal(_llm_weight(converted), _llm_weight(InternVL_V1_5(base, torch_dtype='float32')))


@pytest.mark.parametrize('config,family,vit,deepspeed', [
    pytest.param(LORA, 'internlm2', '300m', None, id='lora'),
    # As the QLoRA configs say to launch them: one process with ZeRO-2 for bf16 mixed precision.
    pytest.param(QLORA, 'internlm2', '6b', 'deepspeed_zero2', id='qlora-zero2', marks=needs_cpu_4bit),
])
def test_lora_and_qlora_runs_keep_only_adapters_and_convert_merged(tiny_checkpoint, shapes_meta, tmp_path, config,
                                                                   family, vit, deepspeed):
    base = tiny_checkpoint(family, vit)
    work = str(tmp_path / 'work')
    log = xtuner_train(config, work, tiny_options(base, shapes_meta, **{'optim_wrapper.optimizer.lr': 1e-3}),
                       deepspeed=deepspeed)
    checkpoint = _trained(work, log)
    assert os.path.isdir(checkpoint) == bool(deepspeed)
    trained = load_trained_state(checkpoint)
    assert trained and all('lora_' in k for k in trained)  # ViT, MLP and LLM frozen: only adapters are saved
    converted = _convert(work, config, checkpoint, str(tmp_path / 'converted'))
    reference = InternVL_V1_5(base, torch_dtype='float32')
    assert not torch.allclose(_llm_weight(converted), _llm_weight(reference), atol=1e-6)  # the merge changed it
    assert torch.equal(converted.model.mlp1[1].weight, reference.model.mlp1[1].weight)


def test_settings_reach_their_uses_and_data_errors_come_before_the_model(tiny_checkpoint, tmp_path):
    """`--cfg-options path=... meta_path=...` reach the dataset (MMEngine alone leaves it the hub id), and a missing
    meta file stops the run before the model is built: the model's own path is given and does not exist, so had
    the model come first, its error would be the one."""
    missing = str(tmp_path / 'missing.json')
    options = {'path': tiny_checkpoint('qwen2'), 'meta_path': missing, 'model.model_path': str(tmp_path / 'none'),
               'env_cfg.dist_cfg.backend': 'gloo'}
    result = subprocess.run(xtuner_command(FULL, str(tmp_path / 'work'), options), env=xtuner_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    assert f"train_dataloader.dataset.meta_path='{missing}'" in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == f'train_dataloader.dataset: {missing} does not exist'
    assert 'Traceback' not in result.stderr


def test_one_process_deepspeed_runs_without_a_launcher_mpi4py_or_shims(tiny_checkpoint, tmp_path):
    """As a user runs a QLoRA config on one GPU (here the CPU): `xtuner train CONFIG --deepspeed deepspeed_zero2`
    with no RANK / MASTER_ADDR in the environment, no mpi4py, and none of the tests' CPU shims."""
    folder = tmp_path / 'data'
    meta = folder / 'meta.json'
    folder.mkdir()
    meta.write_text(json.dumps({'shapes': {'root': str(folder), 'annotation': write_split(str(folder), 'train', 8, seed=0)}}))
    work = str(tmp_path / 'work')
    env = {k: v for k, v in xtuner_env().items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                                                              'MASTER_PORT', 'PYTHONPATH')}
    options = tiny_options(tiny_checkpoint('qwen2'), str(meta))
    del options['env_cfg.dist_cfg.backend']   # the config's own nccl, as a user has it
    result = subprocess.run(xtuner_command(FULL, work, options, deepspeed='deepspeed_zero2'), env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert checkpoints(work)[-1].endswith('iter_4.pth') and os.path.isdir(checkpoints(work)[-1])


def test_deepspeed_zero2_in_two_processes(tiny_checkpoint, shapes_meta, tmp_path):
    base = tiny_checkpoint('internlm2')
    work = str(tmp_path / 'work')
    options = tiny_options(base, shapes_meta, **{'optim_wrapper.optimizer.lr': 1e-3})
    log = xtuner_train(ZERO2, work, options, processes=2, deepspeed='deepspeed_zero2')
    checkpoint = _trained(work, log)
    assert os.path.isdir(checkpoint) and checkpoint.endswith('iter_10.pth'), log[-3000:]  # 40 samples / (2 x 2)
    partitions = sorted(os.path.basename(p)
                        for p in glob.glob(os.path.join(checkpoint, '**', '*optim_states.pt'), recursive=True))
    assert len(partitions) == 2 and 'zero_pp_rank_1' in partitions[1]  # optimizer state split across two ranks
    converted = _convert(work, ZERO2, checkpoint, str(tmp_path / 'converted'))
    assert not torch.equal(_llm_weight(converted), _llm_weight(InternVL_V1_5(base, torch_dtype='float32')))


def test_packed_training_with_deepspeed_zero2(tiny_checkpoint, shapes_meta, tmp_path):
    """The 8B config with its dataset packed (4096-token packs, 'square' loss) under xtuner train + ZeRO-2."""
    base = tiny_checkpoint('internlm2')
    config = packed_config(ZERO2, str(tmp_path / 'packed.py'), max_packed_tokens=4096)
    options = inside_packed_dataset(tiny_options(base, shapes_meta, batch_size=1,
                                                 **{'train_dataloader.dataset.dataset.max_length': 4096}))
    work = str(tmp_path / 'work')
    log = xtuner_train(config, work, options, deepspeed='deepspeed_zero2')
    checkpoint = _trained(work, log)
    # 40 samples of 301 tokens: 13 per 4096-token pack -> 4 packs, one a step.
    assert checkpoint.endswith('iter_4.pth'), log[-3000:]
    converted = _convert(work, config, checkpoint, str(tmp_path / 'converted'))
    assert not torch.equal(_llm_weight(converted), _llm_weight(InternVL_V1_5(base, torch_dtype='float32')))


@pytest.mark.parametrize('config,family', [
    pytest.param('configs/v3/internvl_v3_qwen2_5_0_5b_finetune.py', 'qwen2', id='internvl3-1b-full'),
    pytest.param('configs/v3_5/internvl_v3_5_qwen3_0_6b_finetune.py', 'qwen3', id='internvl3_5-1b-full-packed',
                 marks=needs_qwen3),
])
def test_internvl3_and_internvl3_5_configs_train_and_convert(tiny_checkpoint, shapes_meta, many_shapes_meta, tmp_path,
                                                             config, family):
    """InternVL3 trains MLP + LLM on length-grouped batches; InternVL3.5 trains everything, ViT included, on
    32768-token / 96-tile packs in random order (200 one-tile samples: 96 + 96 + 8 tiles, three steps)."""
    base = tiny_checkpoint(family)
    packed = '/v3_5/' in config
    options = tiny_options(base, many_shapes_meta if packed else shapes_meta, **{'optim_wrapper.optimizer.lr': 1e-3})
    if packed:
        del options['default_hooks.logger.interval']  # the config's 10: a 3-iteration run still logs each one
        options['train_dataloader.batch_size'] = 1
        del options['train_dataloader.sampler.per_device_batch_size']   # random order: no length groups
        inside_packed_dataset(options)
    work = str(tmp_path / 'work')
    log = xtuner_train(config, work, options)
    checkpoint = _trained(work, log)
    assert checkpoint.endswith('iter_3.pth' if packed else 'iter_20.pth'), log[-3000:]
    if packed:
        assert re.findall(r'Iter\(train\) \[(\d)/3\]', log) == ['1', '2', '3']
    trained = load_trained_state(checkpoint)
    assert any(k.startswith('model.vision_model.') for k in trained) == packed
    converted = _convert(work, config, checkpoint, str(tmp_path / 'converted'))
    reference = InternVL_V1_5(base, torch_dtype='float32')
    assert not torch.equal(_llm_weight(converted), _llm_weight(reference))
    vision = (lambda model: model.model.vision_model.encoder.layers[0].mlp.fc1.weight)
    assert torch.equal(vision(converted), vision(reference)) != packed


@needs_qwen3
def test_an_moe_lora_config_trains_its_experts_and_converts(tiny_checkpoint, shapes_meta, tmp_path):
    """InternVL3.5-30B-A3B's LoRA config on a tiny Qwen3-MoE: LoRA reaches attention and experts, the router stays
    as it was, and the converted checkpoint (experts merged) is the released per-expert layout again."""
    base = tiny_checkpoint('qwen3_moe')
    config = 'configs/v3_5/internvl_v3_5_qwen3_30b_a3b_lora_finetune.py'
    work = str(tmp_path / 'work')
    log = xtuner_train(config, work, tiny_options(base, shapes_meta, **{'optim_wrapper.optimizer.lr': 1e-3}))
    checkpoint = _trained(work, log)
    assert checkpoint.endswith('iter_20.pth'), log[-3000:]
    out = str(tmp_path / 'converted')
    converted = _convert(work, config, checkpoint, out)
    keys = set(load_file(os.path.join(out, 'model.safetensors')))
    assert 'language_model.model.layers.0.mlp.experts.3.down_proj.weight' in keys
    reference = InternVL_V1_5(base, torch_dtype='float32')

    def layer(model, part):
        return {n: p for n, p in model.model.language_model.named_parameters() if f'layers.0.mlp.{part}' in n}
    assert all(torch.equal(p, layer(reference, 'gate')[n]) for n, p in layer(converted, 'gate').items())
    assert any(not torch.equal(p, layer(reference, 'experts')[n]) for n, p in layer(converted, 'experts').items())


def _last_checkpoint_iteration(work_dir: str) -> int:
    marker = os.path.join(work_dir, 'last_checkpoint')
    if not os.path.isfile(marker):
        return 0
    name = open(marker).read().strip()
    return int(name.rsplit('iter_', 1)[1].split('.')[0]) if 'iter_' in name else 0


def test_resume_after_kill_continues_with_optimizer_and_scheduler_state(tiny_checkpoint, shapes_meta, tmp_path):
    """Killed at a checkpoint and resumed, the run ends with the same weights as one that never stopped: the
    Adam moments, the learning-rate schedule and the data order all continued (torch >= 2.6 included)."""
    base = tiny_checkpoint('qwen2')
    # fp32 and no ViT drop path (its random state is not part of a checkpoint), so both runs are deterministic.
    options = tiny_options(base, shapes_meta, interval=5, **{
        'model.torch_dtype': 'float32', 'model.drop_path_rate': 0.0, 'optim_wrapper.optimizer.lr': 1e-3})
    interrupted = str(tmp_path / 'interrupted')
    process = subprocess.Popen(xtuner_command(FULL, interrupted, options), env=xtuner_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while _last_checkpoint_iteration(interrupted) < 10 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = _last_checkpoint_iteration(interrupted)
    assert 10 <= killed_at < 20, f'the run was not killed midway (last checkpoint: iteration {killed_at})'
    resume_from = open(os.path.join(interrupted, 'last_checkpoint')).read().strip()
    # Resumed from the config xtuner saved into the work dir, with torch's weights_only default for every other load.
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    log = xtuner_train(saved_config(interrupted, FULL), interrupted, options, resume=resume_from, seed=None)
    assert f'resumed epoch: 0, iter: {killed_at}' in log, log[-3000:]
    assert f'Iter(train) [{killed_at + 1:2d}/20]' in log and 'Iter(train) [20/20]' in log

    uninterrupted = str(tmp_path / 'uninterrupted')
    xtuner_train(FULL, uninterrupted, options)
    resumed_state = load_trained_state(os.path.join(interrupted, 'iter_20.pth'))
    reference = load_trained_state(os.path.join(uninterrupted, 'iter_20.pth'))
    assert resumed_state.keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.allclose(resumed_state[key], tensor, atol=1e-6), key
