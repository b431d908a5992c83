"""How long building InternVL_V1_5_Dataset, its lengths and a check_data pass take on a large annotation file.

    python benchmarks/data_build.py [--lines 100000] [--family qwen2]

Lines mix single-image (with and without width/height), multi-image and text-only samples that point at a few
real image files, so file checks and header reads are real. Prints seconds per phase and lines per second.
"""
import argparse
import json
import os
import random
import tempfile
import time

from PIL import Image

from internvl_plugin import InternVL_V1_5_Dataset
from internvl_plugin.dataset.check import check_dataset
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lines', type=int, default=100_000)
    parser.add_argument('--family', default='qwen2')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, 'model')
        build_tiny_checkpoint(checkpoint, llm=args.family)
        data = write_lines(folder, args.lines)
        kwargs = dict(model_path=checkpoint, data_paths=[data], max_dynamic_patch=6)
        started = time.perf_counter()
        dataset = InternVL_V1_5_Dataset(**kwargs)
        built = time.perf_counter()
        lengths = dataset.modality_length
        measured = time.perf_counter()
        check_dataset(kwargs)
        checked = time.perf_counter()
    rate = (lambda seconds: f'{args.lines / seconds:,.0f} lines/s')
    print(f'{args.lines:,} lines, {len(lengths):,} samples ({args.family} tiny tokenizer)')
    print(f'build (parse + validate + file checks): {built - started:6.2f} s  {rate(built - started)}')
    print(f'modality_length (batched tokenising):   {measured - built:6.2f} s  {rate(measured - built)}')
    print(f'check_data pass (+ image headers):      {checked - measured:6.2f} s  {rate(checked - measured)}')


if __name__ == '__main__':
    main()
