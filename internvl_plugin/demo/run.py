"""The offline demo: tiny checkpoint -> synthetic colour questions -> fine-tune -> convert -> held-out accuracy.

The data goes through the plugin's dataset and collate (the checkpoint's template, official tiling); the training
loop is plain PyTorch over the model class configs use, until `xtuner train` replaces it (issue 4).
"""
import os
import random
import time
from typing import Dict

import torch
from torch.utils.data import DataLoader

from ..dataset import InternVL_V1_5_Dataset, internvl_collate_fn
from ..dataset.templates import IGNORE_INDEX
from ..model.checkpoint.convert import convert_checkpoint
from ..model.internvl import InternVL_V1_5
from ..tiny import build_tiny_checkpoint
from .shapes import COLOURS, write_split


def _log(message: str) -> None:
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


# Full fine-tune of mlp1 + LLM: a random tiny LLM's frozen output head leaves LoRA too little logit range.
# The same arguments build the trained model and go into the config the converter reads.
DEMO_MODEL_ARGS = {'freeze_visual_encoder': True, 'torch_dtype': 'float32', 'use_activation_checkpointing': False}


def write_demo_config(path: str, model_path: str) -> None:
    args = ''.join(f', {k}={v!r}' for k, v in DEMO_MODEL_ARGS.items())
    with open(path, 'w') as f:
        f.write('from internvl_plugin import InternVL_V1_5\n\n'
                f'model = dict(type=InternVL_V1_5, model_path={model_path!r}{args})\n')


def run_demo(work_dir: str, steps: int = 120, batch_size: int = 8, lr: float = 1e-3, seed: int = 0) -> Dict:
    started = time.time()
    random.seed(seed)
    torch.manual_seed(seed)
    base = os.path.join(work_dir, 'tiny-internvl-qwen2')
    data = os.path.join(work_dir, 'data')
    _log(f'building a tiny InternVL checkpoint (Qwen2 + ViT-300M layout) in {base}')
    build_tiny_checkpoint(base, llm='qwen2', vit='300m', seed=seed, overwrite=True)
    _log(f'writing synthetic colour questions ({len(COLOURS)} colours, chance 25%) to {data}')
    train_file = write_split(data, 'train', 512, seed=seed)
    held_out_file = write_split(data, 'held_out', 100, seed=seed + 1)

    train = InternVL_V1_5_Dataset(model_path=base, data_paths=[train_file])
    held_out = InternVL_V1_5_Dataset(model_path=base, data_paths=[held_out_file])
    _log(f'{len(train)} training and {len(held_out)} held-out samples in the {train.template.name} template')
    model = InternVL_V1_5(base, **DEMO_MODEL_ARGS)
    before = accuracy(model, held_out)
    _log(f'untrained held-out accuracy: {before:.0%}')
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=internvl_collate_fn, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    batches = iter(())
    model.train()
    for step in range(1, steps + 1):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        loss = model(**batch, mode='loss')['loss']
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == 1:
            _log(f'step {step}/{steps} loss {loss.item():.4f}')
    checkpoint = os.path.join(work_dir, f'iter_{steps}.pth')
    torch.save({'meta': {'iter': steps}, 'state_dict': model.state_dict()}, checkpoint)
    config = os.path.join(work_dir, 'demo_config.py')
    write_demo_config(config, base)
    converted = os.path.join(work_dir, 'converted')
    _log(f'converting {checkpoint} to the official layout in {converted}')
    convert_checkpoint(config, checkpoint, converted, dtype=torch.float32, overwrite=True)
    reloaded = InternVL_V1_5(converted, torch_dtype='float32', use_activation_checkpointing=False)
    after = accuracy(reloaded, held_out)
    _log(f'held-out accuracy: untrained {before:.0%} -> fine-tuned and converted {after:.0%} '
         f'({len(held_out)} questions, chance 25%) in {time.time() - started:.0f} s')
    _log(f'everything is in {work_dir}')
    return {'before': before, 'after': after}
