"""A mixed training workload written offline: text-only, one-image, two-image and long-answer samples, with
width/height on every image line so length estimates (and so packing plans) are exact. Packing tests and
benchmarks/train_step.py measure on the same lines."""
import json
import os
import random
from typing import Dict

from PIL import Image

SIZES = [(448, 448), (900, 300), (300, 700), (1200, 900)]
WORDS = ['red', 'green', 'blue', 'big', 'small', 'circle', 'square']


def write_mixed_workload(folder: str, count: int, seed: int = 0) -> str:
    """Writes four images and `count` lines (kinds in turn) to `folder`; returns the jsonl path."""
    rng = random.Random(seed)
    for i, size in enumerate(SIZES):
        Image.new('RGB', size, (40 * i, 120, 200)).save(os.path.join(folder, f'{i}.png'))
    path = os.path.join(folder, 'mixed.jsonl')
    with open(path, 'w', encoding='utf-8') as f:
        for i in range(count):
            answer = ' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))
            question = 'Describe.'
            record: Dict = {}
            if i % 4 == 1:
                width, height = SIZES[i % len(SIZES)]
                record.update(image=f'{i % len(SIZES)}.png', width=width, height=height)
                question = '<image>\nDescribe.'
            elif i % 4 == 2:
                record.update(image=['0.png', '1.png'], width=[448, 900], height=[448, 300])
                question = '<image>\n<image>\nCompare.'
            elif i % 4 == 3:
                answer *= 4
            record['conversations'] = [{'from': 'human', 'value': question}, {'from': 'gpt', 'value': answer}]
            f.write(json.dumps(record) + '\n')
    return path
