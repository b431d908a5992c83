"""Small builders shared by the tests: one image prompt and its batch, a checkpoint copy with an edited config."""
import json
import os
import shutil

import torch

from internvl_plugin.model.checkpoint.load import img_context_token_id


def image_batch(model, text_before: str = 'What colour is it?', answer: str = 'red circle', tiles: int = 1):
    """A one-sample batch: text, <img> + tiles*256 context tokens + </img>, an answer; labels on the answer only."""
    tok = model.tokenizer
    context = img_context_token_id(tok, 'test')
    prompt = tok(text_before)['input_ids'] + tok.convert_tokens_to_ids(['<img>']) + \
        [context] * (model.model.tokens_per_tile * tiles) + tok.convert_tokens_to_ids(['</img>'])
    answer_ids = tok(answer, add_special_tokens=False)['input_ids']
    ids = torch.tensor([prompt + answer_ids])
    labels = torch.full_like(ids, -100)
    labels[0, len(prompt):] = ids[0, len(prompt):]
    pixel_values = torch.randn(tiles, 3, 448, 448)
    return {'input_ids': ids, 'labels': labels, 'pixel_values': pixel_values,
            'image_flags': torch.ones(tiles, dtype=torch.long), 'attention_mask': torch.ones_like(ids)}


def write_jsonl(path, records) -> str:
    """Records (dicts, or raw strings for malformed lines) one per line."""
    import json
    with open(path, 'w', encoding='utf-8') as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)) + '\n')
    return str(path)


def save_image(path, width: int, height: int, seed: int = 0) -> str:
    import numpy as np
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def qa(question: str = '<image>\nWhat is it?', answer: str = 'A cat.', **fields):
    return {**fields, 'conversations': [{'from': 'human', 'value': question}, {'from': 'gpt', 'value': answer}]}


def copy_with_config(src, dst, edit) -> str:
    """A copy of checkpoint folder `src` at `dst` whose config.json `edit` (a function of the dict) has changed."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, 'config.json')
    with open(path) as f:
        config = json.load(f)
    edit(config)
    with open(path, 'w') as f:
        json.dump(config, f)
    return str(dst)
