"""A synthetic visual question set whose answers depend on the pixels only: one coloured shape per image.

Written in InternVL's official format (images + a jsonl of conversations), so the same files can feed the dataset.
"""
import json
import os
import random
from typing import Dict, List

from PIL import Image, ImageDraw

COLOURS = {'red': (220, 30, 30), 'green': (30, 170, 60), 'blue': (30, 60, 220), 'yellow': (235, 210, 20)}
SHAPES = ('circle', 'square', 'triangle')
QUESTION = 'What colour is the shape? Answer with one word.'


def draw_shape(colour: str, shape: str, rng: random.Random, size: int = 448) -> Image.Image:
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new('RGB', (size, size), background)
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size // 4, size // 2)
    x, y = rng.randint(0, size - extent), rng.randint(0, size - extent)
    box = (x, y, x + extent, y + extent)
    fill = COLOURS[colour]
    if shape == 'circle':
        draw.ellipse(box, fill=fill)
    elif shape == 'square':
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x + extent // 2, y), (x, y + extent), (x + extent, y + extent)], fill=fill)
    return image


def write_split(folder: str, name: str, count: int, seed: int) -> str:
    """Writes `count` images under folder/images and folder/{name}.jsonl; returns the jsonl path."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, 'images'), exist_ok=True)
    lines: List[Dict] = []
    for i in range(count):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        relative = os.path.join('images', f'{name}_{i:05d}.png')
        draw_shape(colour, shape, rng).save(os.path.join(folder, relative))
        lines.append({'id': f'{name}-{i}', 'image': relative, 'width': 448, 'height': 448,
                      'conversations': [{'from': 'human', 'value': f'<image>\n{QUESTION}'},
                                        {'from': 'gpt', 'value': colour}]})
    path = os.path.join(folder, f'{name}.jsonl')
    with open(path, 'w', encoding='utf-8') as f:
        for line in lines:
            f.write(json.dumps(line) + '\n')
    return path


def write_preference_split(folder: str, name: str, count: int, seed: int) -> str:
    """`write_split`'s images as preference pairs (official MMPR lines): chosen names the shape's colour, rejected
    another colour; returns the jsonl path (folder/{name}_pairs.jsonl)."""
    rng = random.Random(seed + 7919)
    path = os.path.join(folder, f'{name}_pairs.jsonl')
    with open(write_split(folder, name, count, seed), encoding='utf-8') as sft, \
            open(path, 'w', encoding='utf-8') as pairs:
        for line in sft:
            record = json.loads(line)
            question, answer = (turn['value'] for turn in record.pop('conversations'))
            wrong = rng.choice([colour for colour in sorted(COLOURS) if colour != answer])
            pairs.write(json.dumps({**record, 'question': question, 'chosen': answer, 'rejected': wrong}) + '\n')
    return path
