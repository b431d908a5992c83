"""Packing: several samples in one sequence, bounded by a token budget and a tile budget (InternVL 2.5's packed
training), so batches carry almost no padding.

The plan is made once from the dataset's length and tile estimates (no image is opened): best-fit decreasing, which
fills packs nearly to the budget. Each item is then the members' tokens, labels and tiles concatenated, with their
lengths; the collate turns those into per-sample position ids and segment ids, and the model keeps attention within
each sample (variable-length flash attention, or a block-diagonal mask with SDPA / eager).
"""
import bisect
import logging
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import build_from_config

logger = logging.getLogger('internvl_plugin')


def plan_packs(tokens: Sequence[int], tiles: Sequence[int], max_tokens: int, max_tiles: int) -> List[List[int]]:
    """Indices grouped into packs of at most `max_tokens` tokens and `max_tiles` tiles: best-fit decreasing (each
    sample, longest first, goes into the fullest pack it fits in). Every index appears exactly once."""
    tokens = np.asarray(tokens, dtype=np.int64)
    tiles = np.asarray(tiles, dtype=np.int64)
    too_long = np.flatnonzero((tokens > max_tokens) | (tiles > max_tiles))
    if len(too_long):
        first = int(too_long[0])
        raise ValueError(f'sample {first} ({tokens[first]} tokens, {tiles[first]} tiles) exceeds the pack budget of '
                         f'{max_tokens} tokens and {max_tiles} tiles; raise max_packed_tokens / max_packed_tiles')
    packs: List[List[int]] = []
    tile_room: List[int] = []
    free = []  # sorted (free tokens, pack id)
    for index in np.argsort(-tokens, kind='stable').tolist():
        need, need_tiles = int(tokens[index]), int(tiles[index])
        position = bisect.bisect_left(free, (need, -1))
        while position < len(free) and tile_room[free[position][1]] < need_tiles:
            position += 1
        if position == len(free):
            packs.append([index])
            tile_room.append(max_tiles - need_tiles)
            bisect.insort(free, (max_tokens - need, len(packs) - 1))
            continue
        room, pack = free.pop(position)
        packs[pack].append(index)
        tile_room[pack] -= need_tiles
        bisect.insort(free, (room - need, pack))
    return packs


class PackedDataset(Dataset):
    """Wraps an `InternVL_V1_5_Dataset` (or its config dict): item k is pack k of the plan.

    `max_packed_tokens` must hold the longest sample (>= the dataset's max_length); `max_packed_tiles` bounds the
    ViT's work per pack. `length` / `modality_length` are per pack, so XTuner's LengthGroupedSampler and the random
    sampler both work on packs.
    """

    def __init__(self, dataset: Any, max_packed_tokens: int = 16384, max_packed_tiles: int = 48):
        self.dataset = build_from_config(dataset)
        max_length = getattr(self.dataset, 'max_length', max_packed_tokens)
        if max_packed_tokens < max_length:
            raise ValueError(f'max_packed_tokens {max_packed_tokens} is below the dataset max_length {max_length}: '
                             'a sample must fit in one pack')
        self.max_packed_tokens, self.max_packed_tiles = max_packed_tokens, max_packed_tiles
        signed = np.asarray(self.dataset.modality_length)
        tokens = np.minimum(np.abs(signed), max_length)
        self.packs = plan_packs(tokens, self.dataset.tile_counts, max_packed_tokens, max_packed_tiles)
        self.length: List[int] = [int(tokens[pack].sum()) for pack in self.packs]
        # As `length`, negative for packs without any image (XTuner's sampler groups the two kinds apart).
        self.modality_length: List[int] = [length if (signed[pack] > 0).any() else -length
                                           for pack, length in zip(self.packs, self.length)]
        self.pad_token_id = self.dataset.pad_token_id

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        items, total = [], 0
        for member in self.packs[index]:
            item = self.dataset[member]
            if total + len(item['input_ids']) > self.max_packed_tokens:
                # Only a replacement sample (one that could not be loaded) can differ from its estimate.
                logger.warning('pack %d: a replacement sample (for one that could not be loaded) does not fit the '
                               '%d-token budget; the pack goes without it', index, self.max_packed_tokens)
                continue
            items.append(item)
            total += len(item['input_ids'])
        return {'input_ids': torch.cat([item['input_ids'] for item in items]),
                'labels': torch.cat([item['labels'] for item in items]),
                'pixel_values': torch.cat([item['pixel_values'] for item in items]),
                'image_flags': torch.cat([item['image_flags'] for item in items]),
                'sample_lengths': torch.tensor([len(item['input_ids']) for item in items], dtype=torch.long),
                'pad_token_id': self.pad_token_id}
