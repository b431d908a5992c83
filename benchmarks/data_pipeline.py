"""Samples/s and tiles/s of `dataset[i]`: ours against XTuner 0.2.0's InternVL_V1_5_Dataset, side by side.

    python benchmarks/data_pipeline.py [--quick] [--rounds 3]

Both datasets read the same JSONL of single-image questions about real photographs (scikit-image's and
matplotlib's, written as JPEGs at their own sizes and at phone, full-HD, panorama and 800x600 sizes) with the
same tokenizer and tiling settings, for max_dynamic_patch 6 and 12, in one thread as a DataLoader worker runs.
The passes alternate, so drift on a shared machine hits both alike. Each sample is timed from its first access:
XTuner's dataset rewrites its records on access, so its records are restored before every pass.

XTuner's dataset reads the checkpoint config and tokenizer with AutoConfig / AutoTokenizer(trust_remote_code=True),
which need the official remote code that a tiny offline checkpoint does not ship; the benchmark hands it the same
config.json values and the tokenizer ours uses (the plugin's InternLM2Tokenizer on the same tokenizer.model)
instead. It supports InternLM2 and Phi-3 models only, so the checkpoint is a tiny InternLM2 one.
Ours returns uint8 tiles that the model normalises on its device; XTuner's returns normalised float32 tiles.
The `exact_pixels=True` row (full decode, PIL resize, bit-identical tiles) separates the pixel path's share.
The last line is the ratio of samples/s, ours over XTuner's.
"""
import argparse
import copy
import json
import os
import tempfile
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Tuple

import torch

from internvl_plugin import InternVL_V1_5_Dataset
from internvl_plugin.files import load_tokenizer
from internvl_plugin.tiny import build_tiny_checkpoint, photo_paths, write_photos

QUICK_SIZES = [None, (4032, 3024), (1920, 1080)]
QUESTION = '<image>\nDescribe this photo in detail, including the colours and any text you can read.'
ANSWER = 'The photo shows the scene described above, with its main subject in the centre and a plain background.'


def write_samples(folder: str, quick: bool) -> str:
    photos = photo_paths()[:4] if quick else photo_paths()
    names = write_photos(folder, sizes=QUICK_SIZES, photos=photos) if quick else write_photos(folder, photos=photos)
    path = os.path.join(folder, 'photos.jsonl')
    with open(path, 'w', encoding='utf-8') as f:
        for name in names:
            turns = [{'from': 'human', 'value': QUESTION}, {'from': 'gpt', 'value': ANSWER}]
            f.write(json.dumps({'image': name, 'conversations': turns}) + '\n')
    return path


def _namespace(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{key: _namespace(item) for key, item in value.items()})
    return value


def xtuner_dataset(model_path: str, data_path: str, folder: str, max_dynamic_patch: int):
    """XTuner's InternVL_V1_5_Dataset on the checkpoint's config.json values (see the module docstring)."""
    import xtuner.dataset.internvl_dataset as xtuner_module
    from xtuner.utils import PROMPT_TEMPLATE
    with open(os.path.join(model_path, 'config.json'), encoding='utf-8') as f:
        config = json.load(f)
    config['max_dynamic_patch'] = max_dynamic_patch
    xtuner_module.AutoConfig = SimpleNamespace(from_pretrained=lambda *args, **kwargs: _namespace(config))
    xtuner_module.AutoTokenizer = SimpleNamespace(from_pretrained=lambda *args, **kwargs: load_tokenizer(model_path))
    return xtuner_module.InternVL_V1_5_Dataset(model_path, copy.deepcopy(PROMPT_TEMPLATE.internlm2_chat),
                                               data_paths=[data_path], image_folders=[folder], max_length=16384)


def timed_pass(dataset: Any, reset: Callable[[], None]) -> Tuple[float, int]:
    """Seconds and tiles for one pass over every sample."""
    reset()
    tiles = 0
    started = time.perf_counter()
    for index in range(len(dataset)):
        tiles += dataset[index]['pixel_values'].shape[0]
    return time.perf_counter() - started, tiles


def compare(model_path: str, data_path: str, folder: str, max_dynamic_patch: int, rounds: int) -> float:
    common = dict(model_path=model_path, data_paths=[data_path], image_folders=[folder], max_length=16384,
                  max_dynamic_patch=max_dynamic_patch)
    runs: Dict[str, Tuple[Any, Callable[[], None]]] = {
        'ours': (InternVL_V1_5_Dataset(**common), lambda: None),
        'ours, exact_pixels=True': (InternVL_V1_5_Dataset(exact_pixels=True, **common), lambda: None)}
    xtuner = xtuner_dataset(model_path, data_path, folder, max_dynamic_patch)
    records = copy.deepcopy(xtuner.data)
    runs['XTuner 0.2.0'] = (xtuner, lambda: setattr(xtuner, 'data', copy.deepcopy(records)))
    ours_tiles = [runs['ours'][0][i]['pixel_values'].shape[0] for i in range(len(xtuner))]
    xtuner_tiles = [xtuner[i]['pixel_values'].shape[0] for i in range(len(xtuner))]
    if ours_tiles != xtuner_tiles:
        raise SystemExit(f'the datasets tile differently: ours {ours_tiles}, XTuner {xtuner_tiles}')
    totals = {name: [0.0, 0] for name in runs}
    for _ in range(rounds):
        for name, (dataset, reset) in runs.items():
            seconds, tiles = timed_pass(dataset, reset)
            totals[name][0] += seconds
            totals[name][1] += tiles
    samples = rounds * len(xtuner)
    print(f'\nmax_dynamic_patch {max_dynamic_patch}: {len(xtuner)} photos x {rounds} rounds, '
          f'{sum(xtuner_tiles) / len(xtuner):.1f} tiles per sample')
    print(f'{"dataset":<26}{"samples/s":>10}{"tiles/s":>10}{"ms/sample":>11}{"vs XTuner":>11}')
    baseline = samples / totals['XTuner 0.2.0'][0]
    for name, (seconds, tiles) in totals.items():
        print(f'{name:<26}{samples / seconds:>10.1f}{tiles / seconds:>10.1f}{1000 * seconds / samples:>11.1f}'
              f'{samples / seconds / baseline:>10.2f}x')
    return samples / totals['ours'][0] / baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='4 photos at 3 sizes, one round (under a minute)')
    parser.add_argument('--rounds', type=int, default=None, help='passes per dataset (default 3, --quick 1)')
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        model_path = os.path.join(folder, 'model')
        build_tiny_checkpoint(model_path, llm='internlm2')
        data_path = write_samples(folder, args.quick)
        ratios: List[str] = []
        for max_dynamic_patch in (6, 12):
            ratio = compare(model_path, data_path, folder, max_dynamic_patch, rounds)
            ratios.append(f'{ratio:.2f}x (max_dynamic_patch {max_dynamic_patch})')
    print(f'torch {torch.__version__}, one thread')
    print('ours / XTuner samples/s: ' + ', '.join(ratios))


if __name__ == '__main__':
    main()
