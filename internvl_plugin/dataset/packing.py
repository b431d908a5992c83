"""Packing: several samples in one sequence, bounded by a token budget and a tile budget (InternVL 2.5's packed
training), so batches carry almost no padding.

The plan is made once from the dataset's length and tile estimates (no image is opened): best-fit decreasing, which
fills packs nearly to the budget. Each item is then the members' tokens, labels and tiles concatenated, with their
lengths; the collate turns those into per-sample position ids and segment ids, and the model keeps attention within
each sample (variable-length flash attention, or a block-diagonal mask with SDPA / eager).
"""
import bisect
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import build_from_config


class _OpenPacks:
    """Open packs by free tokens: a max-segment tree over the free-token values 0..max_tokens whose leaf v holds the
    largest tile room among packs with v tokens free. The fullest pack that has room for a sample is the leftmost
    leaf at or right of its tokens whose tile room suffices: found and updated in O(log max_tokens), so planning
    stays O(n log max_tokens) when the tile budget binds too."""

    def __init__(self, max_tokens: int):
        self.size = 1 << max_tokens.bit_length()   # > max_tokens: a leaf for every free-token value
        self.room = [-1] * (2 * self.size)
        self.leaves: Dict[int, List[Tuple[int, int]]] = {}   # free tokens -> sorted (tile room, pack)

    def add(self, free: int, tile_room: int, pack: int) -> None:
        bisect.insort(self.leaves.setdefault(free, []), (tile_room, pack))
        self._update(free)

    def take(self, tokens: int, tiles: int) -> Optional[Tuple[int, int, int]]:
        """(free tokens, tile room, pack) of the fullest open pack that fits, removed from the tree; None if none."""
        node = tokens + self.size
        while self.room[node] < tiles:
            while node & 1:     # a right child: its right neighbours lie above
                node >>= 1
            if node == 0:
                return None
            node += 1
        while node < self.size:
            node = 2 * node if self.room[2 * node] >= tiles else 2 * node + 1
        free = node - self.size
        leaf = self.leaves[free]
        tile_room, pack = leaf.pop(bisect.bisect_left(leaf, (tiles, -1)))
        self._update(free)
        return free, tile_room, pack

    def _update(self, free: int) -> None:
        leaf = self.leaves.get(free)
        node = free + self.size
        self.room[node] = leaf[-1][0] if leaf else -1
        node >>= 1
        while node:
            self.room[node] = max(self.room[2 * node], self.room[2 * node + 1])
            node >>= 1


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
    open_packs = _OpenPacks(max_tokens)
    order = np.argsort(-tokens, kind='stable')
    for index, need, need_tiles in zip(order.tolist(), tokens[order].tolist(), tiles[order].tolist()):
        found = open_packs.take(need, need_tiles)
        if found is None:
            packs.append([index])
            open_packs.add(max_tokens - need, max_tiles - need_tiles, len(packs) - 1)
            continue
        free, tile_room, pack = found
        packs[pack].append(index)
        open_packs.add(free - need, tile_room - need_tiles, pack)
    return packs


class PackedDataset(Dataset):
    """Wraps an `InternVL_V1_5_Dataset` (or its config dict): item k is pack k of the plan.

    `max_packed_tokens` must hold the longest sample (>= the dataset's max_length); `max_packed_tiles` bounds the
    ViT's work per pack. `length` / `modality_length` are per pack, so XTuner's LengthGroupedSampler and the random
    sampler both work on packs. The plan trusts the lines' `length` and width/height; where they understate a
    sample and a pack outgrows a budget, the pack is split into rows that each fit (`rows`, which the collate
    turns into batch rows), so every sample still trains, and each understated line is named once.
    """

    def __init__(self, dataset: Any, max_packed_tokens: int = 16384, max_packed_tiles: int = 48):
        self.dataset = build_from_config(dataset)
        max_length = getattr(self.dataset, 'max_length', max_packed_tokens)
        if max_packed_tokens < max_length:
            raise ValueError(f'max_packed_tokens {max_packed_tokens} is below the dataset max_length {max_length}: '
                             'a sample must fit in one pack')
        self.max_packed_tokens, self.max_packed_tiles = max_packed_tokens, max_packed_tiles
        signed = np.asarray(self.dataset.modality_length)
        self.estimated_tokens = np.minimum(np.abs(signed), max_length)
        self.estimated_tiles = np.asarray(self.dataset.tile_counts, dtype=np.int64)
        self.packs = plan_packs(self.estimated_tokens, self.estimated_tiles, max_packed_tokens, max_packed_tiles)
        self.length: List[int] = [int(self.estimated_tokens[pack].sum()) for pack in self.packs]
        # As `length`, negative for packs without any image (XTuner's sampler groups the two kinds apart).
        self.modality_length: List[int] = [length if (signed[pack] > 0).any() else -length
                                           for pack, length in zip(self.packs, self.length)]
        self.pad_token_id = self.dataset.pad_token_id

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        served = [self.dataset.fetch(member) for member in self.packs[index]]
        rows: List[List[Dict[str, Any]]] = [[]]
        tokens = tiles = 0
        for _, item in served:
            size, count = len(item['input_ids']), len(item['pixel_values'])
            if rows[-1] and (tokens + size > self.max_packed_tokens or tiles + count > self.max_packed_tiles):
                rows.append([])
                tokens = tiles = 0
            rows[-1].append(item)
            tokens, tiles = tokens + size, tiles + count
        if len(rows) == 1:
            return _concatenated(rows[0], self.pad_token_id)
        for position, item in served:
            self._report_understated(index, len(rows), position, item)
        return {'rows': [_concatenated(row, self.pad_token_id) for row in rows], 'pad_token_id': self.pad_token_id}

    def _report_understated(self, pack: int, n_rows: int, position: int, item: Dict[str, Any]) -> None:
        tokens, tiles = len(item['input_ids']), len(item['pixel_values'])
        estimated_tokens, estimated_tiles = int(self.estimated_tokens[position]), int(self.estimated_tiles[position])
        if tokens <= estimated_tokens and tiles <= estimated_tiles:
            return
        self.dataset.warn_once(position, f'{self.dataset.where(position)}: planned as {estimated_tokens} tokens and '
                               f'{estimated_tiles} tiles (its "length" / width and height), it is {tokens} tokens '
                               f'and {tiles} tiles; pack {pack} outgrew the {self.max_packed_tokens}-token / '
                               f'{self.max_packed_tiles}-tile budget and trains as {n_rows} rows. Fix the line, or '
                               'rewrite the lengths with tools/check_data.py --write-length')


def _concatenated(items: List[Dict[str, Any]], pad_token_id: int) -> Dict[str, Any]:
    """One packed row: the samples' tensors end to end, with each sample's length."""
    return {'input_ids': torch.cat([item['input_ids'] for item in items]),
            'labels': torch.cat([item['labels'] for item in items]),
            'pixel_values': torch.cat([item['pixel_values'] for item in items]),
            'image_flags': torch.cat([item['image_flags'] for item in items]),
            'sample_lengths': torch.tensor([len(item['input_ids']) for item in items], dtype=torch.long),
            'pad_token_id': pad_token_id}
