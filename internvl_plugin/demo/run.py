"""The offline demo: tiny checkpoint -> synthetic colour questions -> `xtuner train` with a shipped config ->
`tools/convert_to_official.py` -> held-out accuracy of the converted model next to the untrained one.

The answers depend on the pixels only, so a high score shows that images reach the LLM through the whole pipeline.
"""
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

import torch

from ..curves import plot_training_curves, read_training_curves
from ..dataset import InternVL_V1_5_Dataset
from ..dataset.templates import IGNORE_INDEX
from ..model.internvl import InternVL_V1_5
from ..tiny import build_tiny_checkpoint
from .shapes import COLOURS, write_split

# The InternVL2_5-1B full fine-tune config (Qwen2 LLM, internvl2_5 template), as a user would run it; the demo only
# points it at the tiny checkpoint and data and gives the random tiny model a larger learning rate.
DEMO_CONFIG = os.path.join('configs', 'v2_5', 'internvl_v2_5_qwen2_5_0_5b_finetune.py')


def demo_log(message: str) -> None:
    print(f'[demo] {message}', flush=True)


@torch.no_grad()
def accuracy(model: InternVL_V1_5, held_out: InternVL_V1_5_Dataset) -> float:
    """Greedy answers to each held-out question; the prompt is the sample's tokens before its answer."""
    model.eval()
    correct = 0
    for index in range(len(held_out)):
        item = held_out.load(index)
        supervised = item['labels'] != IGNORE_INDEX
        answer_start = int(supervised.nonzero()[0])
        expected = model.tokenizer.decode(item['labels'][supervised], skip_special_tokens=True).strip()
        out = model.model.generate(item['input_ids'][None, :answer_start], item['pixel_values'], max_new_tokens=3,
                                   do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
        answer = model.tokenizer.decode(out[0], skip_special_tokens=True).split()
        correct += bool(answer) and answer[0] == expected
    return correct / len(held_out)


def write_meta(path: str, root: str, annotation: str, repeat_time: float) -> str:
    with open(path, 'w', encoding='utf-8') as f:
        json.dump({'colour-shapes': {'root': root, 'annotation': annotation, 'repeat_time': repeat_time}}, f, indent=2)
    return path


def train_command(repo: str, work_dir: str, model_path: str, meta_path: str, lr: float, batch_size: int,
                  config: str = DEMO_CONFIG, **options: Any) -> List[str]:
    """The config's own settings (the top lines), overridden as a user would: each reaches every value the config
    computes from it (`path` -> the model's and the dataset's model_path); `options`: more --cfg-options."""
    options = {
        'path': model_path, 'meta_path': meta_path, 'lr': lr, 'batch_size': batch_size, 'accumulative_counts': 1,
        'dataloader_num_workers': 2, 'model.torch_dtype': 'float32', **options,
    }
    xtuner = os.path.join(os.path.dirname(sys.executable), 'xtuner')
    return [xtuner, 'train', os.path.join(repo, config), '--work-dir', work_dir, '--seed', '0',
            '--cfg-options'] + [f'{k}={v}' for k, v in options.items()]


_PROGRESS = re.compile(r'Iter\(train\) \[\s*(\d+)/(\d+)\].*? lr: (\S+).* loss: (\S+)')


def run_logged(command: List[str], log_path: str) -> int:
    """Runs `command`, writing its output to `log_path` and echoing each logged training iteration; returns its
    exit status."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
    with open(log_path, 'w', encoding='utf-8') as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in process.stdout:
            log.write(line)
            progress = _PROGRESS.search(line)
            if progress:
                step, steps, lr, loss = progress.groups()
                print(f'         iteration {step}/{steps}  lr {lr}  loss {loss}', flush=True)
        return process.wait()


def train_and_convert(command: List[str], repo: str, config: str, work_dir: str, train_dir: str,
                      converted: str) -> None:
    """Runs `command` (xtuner train of `config` into `train_dir`, output in work_dir/xtuner_train.log) and converts
    its last checkpoint to the official layout in `converted`."""
    os.makedirs(train_dir, exist_ok=True)
    train_log = os.path.join(work_dir, 'xtuner_train.log')
    status = run_logged(command, train_log)
    marker = os.path.join(train_dir, 'last_checkpoint')
    if status or not os.path.isfile(marker):
        raise RuntimeError(f'xtuner train failed (exit status {status}) or left no checkpoint in {train_dir}; see '
                           f'{train_log}')
    checkpoint = open(marker).read().strip()
    saved = os.path.join(train_dir, os.path.basename(config))  # the config with the overrides applied
    demo_log(f'converting {checkpoint} to the official layout in {converted}')
    subprocess.run([sys.executable, os.path.join(repo, 'tools', 'convert_to_official.py'), saved, checkpoint,
                    converted, '--dtype', 'float32', '--overwrite'], check=True)


def demo_folders(work_dir: str, seed: int) -> Tuple[str, str, str, str, str]:
    """The demo's folders (work dir, tiny checkpoint, data, training, converted result), with the tiny checkpoint
    built; seeds torch."""
    torch.manual_seed(seed)
    work_dir = os.path.abspath(work_dir)
    base = os.path.join(work_dir, 'tiny-internvl-qwen2')
    demo_log(f'building a tiny InternVL checkpoint (Qwen2 + ViT-300M layout, official files) in {base}')
    build_tiny_checkpoint(base, llm='qwen2', vit='300m', seed=seed, overwrite=True)
    return (work_dir, base, os.path.join(work_dir, 'data'), os.path.join(work_dir, 'train'),
            os.path.join(work_dir, 'converted'))


def run_demo(work_dir: str, repo: str, lr: float = 2e-3, batch_size: int = 8, repeat_time: int = 4,
             seed: int = 0) -> Dict:
    started = time.time()
    work_dir, base, data, train_dir, converted = demo_folders(work_dir, seed)
    demo_log(f'writing synthetic colour questions ({len(COLOURS)} colours, chance 25%) to {data}')
    train_file = write_split(data, 'train', 512, seed=seed)
    held_out_file = write_split(data, 'held_out', 100, seed=seed + 1)
    meta = write_meta(os.path.join(data, 'meta.json'), data, train_file, repeat_time=repeat_time)
    held_out = InternVL_V1_5_Dataset(model_path=base, data_paths=[held_out_file])
    before = accuracy(InternVL_V1_5(base, torch_dtype='float32', use_activation_checkpointing=False), held_out)
    demo_log(f'untrained held-out accuracy: {before:.0%} ({len(held_out)} questions)')

    command = train_command(repo, train_dir, base, meta, lr, batch_size)
    demo_log(f'fine-tuning on 512 images x repeat_time {repeat_time} (one epoch): xtuner train {DEMO_CONFIG} ...')
    train_and_convert(command, repo, DEMO_CONFIG, work_dir, train_dir, converted)
    curves = plot_training_curves(read_training_curves(train_dir), os.path.join(work_dir, 'training_curves.png'),
                                  title=f'demo: {os.path.basename(DEMO_CONFIG)}')
    demo_log(f'loss, lr and grad norm drawn in {curves}')
    after = accuracy(InternVL_V1_5(converted, torch_dtype='float32', use_activation_checkpointing=False), held_out)
    demo_log(f'held-out accuracy: untrained {before:.0%} -> fine-tuned and converted {after:.0%} '
             f'({len(held_out)} questions, chance 25%) in {time.time() - started:.0f} s')
    demo_log(f'written under {work_dir}: tiny checkpoint {os.path.basename(base)}/, data/, train/ (checkpoints, '
             'config, logs), xtuner_train.log, training_curves.png, converted/ (the official-layout result)')
    return {'before': before, 'after': after}
