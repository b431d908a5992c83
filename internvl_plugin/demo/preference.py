"""The offline preference demo: tiny checkpoint -> synthetic colour pairs (chosen names the shape's colour, rejected
another) -> `xtuner train` with the shipped MPO config -> `tools/convert_to_official.py` -> on held-out pairs, how
often the chosen answer is the likelier one and how often the greedy answer is right, next to the untrained model.
"""
import os
import time
from typing import Dict

import torch

from ..dataset import InternVL_V1_5_Dataset, PreferenceDataset, preference_collate_fn
from ..model.internvl import InternVL_V1_5
from ..model.preference_model import network_sequence_logps
from .run import accuracy, demo_folders, demo_log, train_and_convert, train_command, write_meta
from .shapes import COLOURS, write_preference_split

# The InternVL2_5-1B MPO config (full: a frozen copy as the reference), as a user would run it; the demo points it
# at the tiny checkpoint and data and gives the random tiny model a larger learning rate.
PREFERENCE_CONFIG = os.path.join('configs', 'v2_5', 'internvl_v2_5_qwen2_5_0_5b_mpo.py')


@torch.no_grad()
def preference_accuracy(model: InternVL_V1_5, pairs: PreferenceDataset, batch_size: int = 10) -> float:
    """The share of pairs whose chosen answer has the higher summed log-probability."""
    model.eval()
    preferred = 0
    for start in range(0, len(pairs), batch_size):
        items = [pairs[index] for index in range(start, min(start + batch_size, len(pairs)))]
        sums, _, _ = network_sequence_logps(model.model, preference_collate_fn(items)['data'])
        chosen, rejected = sums.chunk(2)
        preferred += int((chosen > rejected).sum())
    return preferred / len(pairs)


def _scores(model_path: str, pairs: PreferenceDataset, questions: InternVL_V1_5_Dataset) -> Dict[str, float]:
    model = InternVL_V1_5(model_path, torch_dtype='float32', use_activation_checkpointing=False)
    return {'preference': preference_accuracy(model, pairs), 'greedy': accuracy(model, questions)}


def run_preference_demo(work_dir: str, repo: str, lr: float = 2e-3, batch_size: int = 4, repeat_time: int = 1,
                        seed: int = 0) -> Dict[str, Dict[str, float]]:
    """{'before': {'preference': ..., 'greedy': ...}, 'after': {...}} on 100 held-out pairs."""
    started = time.time()
    work_dir, base, data, train_dir, converted = demo_folders(work_dir, seed)
    demo_log(f'writing synthetic colour pairs ({len(COLOURS)} colours: chosen the right one, rejected another) '
             f'to {data}')
    train_file = write_preference_split(data, 'train', 512, seed=seed)
    held_out_pairs = write_preference_split(data, 'held_out', 100, seed=seed + 1)
    meta = write_meta(os.path.join(data, 'meta.json'), data, train_file, repeat_time=repeat_time)
    pairs = PreferenceDataset(model_path=base, data_paths=[held_out_pairs])
    questions = InternVL_V1_5_Dataset(model_path=base, data_paths=[os.path.join(data, 'held_out.jsonl')])
    before = _scores(base, pairs, questions)
    demo_log(f"untrained: chosen likelier in {before['preference']:.0%} of {len(pairs)} held-out pairs, greedy "
             f"answer right in {before['greedy']:.0%}")
    # The tiny model's activations are small: recomputing them (the config's checkpointing) only costs time.
    command = train_command(repo, train_dir, base, meta, lr, batch_size, config=PREFERENCE_CONFIG,
                            **{'model.use_activation_checkpointing': False})
    demo_log(f'preference training on 512 pairs x repeat_time {repeat_time} at batch {batch_size} (one epoch): '
             f'xtuner train {PREFERENCE_CONFIG} ...')
    train_and_convert(command, repo, PREFERENCE_CONFIG, work_dir, train_dir, converted)
    after = _scores(converted, pairs, questions)
    demo_log(f"trained and converted: chosen likelier {before['preference']:.0%} -> {after['preference']:.0%}, "
             f"greedy answer right {before['greedy']:.0%} -> {after['greedy']:.0%} (chance 25%) in "
             f'{time.time() - started:.0f} s')
    return {'before': before, 'after': after}
