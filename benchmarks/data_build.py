"""How long building InternVL_V1_5_Dataset, its lengths, a packing plan and a check_data pass take on a large
annotation file, and how soon a dataset none of whose samples fits fails.

    python benchmarks/data_build.py [--lines 200000] [--family qwen2] [--workers N]

Lines mix single-image (with and without width/height), multi-image and text-only samples that point at a few
real image files, so file checks and header reads are real. Lengths are counted in one process and in --workers
(default: up to 8 CPUs) side by side; the plan packs them into 16384 tokens / 48 tiles, a budget the tiles fill
first. Then two datasets of the image lines none of which fits: one whose images alone exceed max_length (refused
at build) and one whose samples are each dropped when loaded (the first item fails, each line loaded once). Prints
seconds per phase, lines per second and the workers' speed-up.
"""
import argparse
import json
import logging
import os
import random
import tempfile
import time

import numpy as np
from PIL import Image

from internvl_plugin import InternVL_V1_5_Dataset, PackedDataset
from internvl_plugin.dataset.check import check_dataset
from internvl_plugin.dataset.parallel import default_workers
from internvl_plugin.dataset.sources import DataError
from internvl_plugin.tiny import build_tiny_checkpoint

QUESTIONS = ['What is in the image?', 'Describe the picture in detail.', 'How many objects are there?',
             'What colour is the shape? Answer with one word.']
ANSWERS = ['The image shows a red circle on a white background.', 'There are 3 objects.', 'blue',
           'A photo of a dog running in the park. ' * 4]


def write_lines(folder: str, count: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    sizes = [(448, 448), (1024, 768), (640, 1280), (1920, 1080)]
    for i, size in enumerate(sizes):
        Image.new('RGB', size, (i * 60, 100, 200)).save(os.path.join(folder, f'img{i}.jpg'))
    path = os.path.join(folder, 'data.jsonl')
    with open(path, 'w') as f:
        for i in range(count):
            kind = i % 4
            turns = [{'from': 'human', 'value': rng.choice(QUESTIONS)}, {'from': 'gpt', 'value': rng.choice(ANSWERS)}]
            record = {'id': i, 'conversations': turns}
            image = rng.randrange(len(sizes))
            if kind == 0:
                record.update(image=f'img{image}.jpg', width=sizes[image][0], height=sizes[image][1])
            elif kind == 1:
                record['image'] = f'img{image}.jpg'
            elif kind == 2:
                record['image'] = [f'img{image}.jpg', f'img{(image + 1) % len(sizes)}.jpg']
            f.write(json.dumps(record) + '\n')
    return path


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def fails(kwargs: dict, max_length: int) -> str:
    """Where a dataset of image samples none of which fits `max_length` stops: 'build' or 'first item'."""
    try:
        dataset = InternVL_V1_5_Dataset(**kwargs, max_length=max_length)
    except DataError:
        return 'build'
    try:
        dataset[0]
    except DataError:
        return 'first item'
    return 'NOWHERE'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lines', type=int, default=200_000)
    parser.add_argument('--family', default='qwen2')
    parser.add_argument('--workers', type=int, default=default_workers())
    args = parser.parse_args()
    logging.getLogger('internvl_plugin').setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, 'model')
        build_tiny_checkpoint(checkpoint, llm=args.family)
        data = write_lines(folder, args.lines)
        kwargs = dict(model_path=checkpoint, data_paths=[data], max_dynamic_patch=6)
        dataset, built = timed(lambda: InternVL_V1_5_Dataset(**kwargs, length_workers=1))
        lengths, serial = timed(lambda: dataset.modality_length)
        parallel_dataset = InternVL_V1_5_Dataset(**kwargs, length_workers=args.workers)
        parallel_lengths, parallel = timed(lambda: parallel_dataset.modality_length)
        if parallel_lengths != lengths:
            raise SystemExit('the workers counted other lengths than one process did')
        packed, planned = timed(lambda: PackedDataset(dataset, max_packed_tokens=16384, max_packed_tiles=48))
        _, checked = timed(lambda: check_dataset(kwargs))
        image_lines = os.path.join(folder, 'images.jsonl')
        with open(data) as source, open(image_lines, 'w') as target:
            target.writelines(line for number, line in enumerate(source) if number % 4 != 3)
        image_kwargs = {**kwargs, 'data_paths': [image_lines]}
        images_alone, images_alone_time = timed(lambda: fails(image_kwargs, 64))
        each_dropped, each_dropped_time = timed(lambda: fails(image_kwargs, 260))
    rate = (lambda seconds: f'{args.lines / seconds:,.0f} lines/s')
    tile_counts = np.asarray(dataset.tile_counts)
    tiles = np.mean([tile_counts[pack].sum() for pack in packed.packs])
    print(f'{args.lines:,} lines, {len(lengths):,} samples ({args.family} tiny tokenizer), {os.cpu_count()} CPUs')
    print(f'build (parse + validate + file checks):   {built:6.2f} s  {rate(built)}')
    print(f'lengths, 1 process:                       {serial:6.2f} s  {rate(serial)}')
    print(f'lengths, {args.workers} worker processes:               {parallel:6.2f} s  {rate(parallel)}  '
          f'{serial / parallel:.2f}x')
    print(f'packing plan ({len(packed):,} packs, {tiles:.1f} of 48 tiles each): {planned:6.2f} s')
    print(f'check_data pass (+ image headers):        {checked:6.2f} s  {rate(checked)}')
    print(f'images alone over max_length (64): fails at {images_alone} after {images_alone_time:.2f} s')
    print(f'every sample dropped at load (max_length 260): fails at {each_dropped} after {each_dropped_time:.2f} s')


if __name__ == '__main__':
    main()
