"""The offline demo: tiny checkpoint -> synthetic colour questions -> fine-tune -> convert -> held-out accuracy.

The training loop here is plain PyTorch over the model class configs use; the `xtuner train` path replaces it once
the dataset and configs land (issues 3 and 4).
"""
import json
import os
import random
import time
from typing import Dict, List

import numpy as np
import torch
from PIL import Image

from ..model.checkpoint.convert import convert_checkpoint
from ..model.internvl import InternVL_V1_5
from ..tiny import build_tiny_checkpoint
from .shapes import COLOURS, write_split

SYSTEM = '你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。'


def _log(message: str) -> None:
    print(f'[demo] {message}', flush=True)


def _encode(model: InternVL_V1_5, question: str, answer: str = '') -> Dict[str, List[int]]:
    """One image turn in the internvl2_5 template; labels on the answer and its end token."""
    tok = model.tokenizer
    image = '<img>' + '<IMG_CONTEXT>' * model.model.tokens_per_tile + '</img>'
    prompt = (f'<|im_start|>system\n{SYSTEM}<|im_end|>\n'
              f'<|im_start|>user\n{image}\n{question}<|im_end|>\n<|im_start|>assistant\n')
    prompt_ids = tok(prompt, add_special_tokens=False)['input_ids']
    answer_ids = tok(f'{answer}<|im_end|>', add_special_tokens=False)['input_ids'] if answer else []
    return {'input_ids': prompt_ids + answer_ids, 'labels': [-100] * len(prompt_ids) + answer_ids}


def _tile(path: str) -> torch.Tensor:
    image = Image.open(path).convert('RGB').resize((448, 448), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)  # uint8, normalised by the model


def _read(jsonl: str) -> List[Dict]:
    root = os.path.dirname(jsonl)
    samples = []
    for line in open(jsonl, encoding='utf-8'):
        record = json.loads(line)
        question = record['conversations'][0]['value'].replace('<image>\n', '')
        samples.append({'image': os.path.join(root, record['image']), 'question': question,
                        'answer': record['conversations'][1]['value']})
    return samples


def _batch(model: InternVL_V1_5, samples: List[Dict]) -> Dict[str, torch.Tensor]:
    encoded = [_encode(model, s['question'], s['answer']) for s in samples]
    length = max(len(e['input_ids']) for e in encoded)
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([e['input_ids'] + [pad] * (length - len(e['input_ids'])) for e in encoded])
    labels = torch.tensor([e['labels'] + [-100] * (length - len(e['labels'])) for e in encoded])
    mask = torch.tensor([[1] * len(e['input_ids']) + [0] * (length - len(e['input_ids'])) for e in encoded])
    pixels = torch.stack([_tile(s['image']) for s in samples])
    return {'input_ids': ids, 'labels': labels, 'attention_mask': mask, 'pixel_values': pixels,
            'image_flags': torch.ones(len(samples), dtype=torch.long)}


@torch.no_grad()
def accuracy(model: InternVL_V1_5, samples: List[Dict]) -> float:
    model.eval()
    correct = 0
    for sample in samples:
        ids = torch.tensor([_encode(model, sample['question'])['input_ids']])
        out = model.model.generate(ids, _tile(sample['image']).unsqueeze(0), max_new_tokens=3, do_sample=False,
                                   pad_token_id=model.tokenizer.pad_token_id)
        answer = model.tokenizer.decode(out[0], skip_special_tokens=True).strip()
        correct += answer.split()[0] == sample['answer'] if answer else 0
    return correct / len(samples)


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
    train = _read(write_split(data, 'train', 512, seed=seed))
    held_out = _read(write_split(data, 'held_out', 100, seed=seed + 1))

    model = InternVL_V1_5(base, **DEMO_MODEL_ARGS)
    before = accuracy(model, held_out)
    _log(f'untrained held-out accuracy: {before:.0%}')
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    model.train()
    for step in range(1, steps + 1):
        loss = model(_batch(model, rng.sample(train, batch_size)))['loss']
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
