"""Batching: the contract between the dataset and the model.

An instance holding `rows` (a pack split because its samples outgrew their estimates) gives one batch row each.

`internvl_collate_fn` returns {'data': {...}, 'data_samples': None} (MMEngine's model input) with
  input_ids      (B, L) long, right-padded with the tokenizer's pad id
  labels         (B, L) long, -100 on padding and on everything that is not an answer
  attention_mask (B, L) long, 1 on each sample's own tokens (from its length, not from pad-id tests)
  position_ids   (B, L) long, 0..n-1 per sample (restarting at each sample of a pack)
  segment_ids    (B, L) long, 1..k for the k samples of a row (k = 1 unless packed), 0 on padding: the model keeps
                 attention within a segment and weighs the loss per sample with it
  pixel_values   (T, 3, S, S) uint8, the tiles of all samples in order
  image_flags    (T,) long, 1 per real tile; a batch without any image gets one blank tile flagged 0, which
                 keeps the vision path in the graph so every rank has gradients for it
"""
from typing import Any, Dict, List, Optional, Tuple

import torch

from .templates import IGNORE_INDEX


def internvl_collate_fn(instances: List[Dict[str, Any]], pad_token_id: Optional[int] = None) -> Dict[str, Any]:
    if not instances:
        raise ValueError('internvl_collate_fn got an empty batch')
    instances = [row for instance in instances for row in instance.get('rows', [instance])]
    pad_token_id = _pad_id(instances, pad_token_id)
    lengths = [len(instance['input_ids']) for instance in instances]
    longest = max(lengths)
    input_ids = torch.full((len(instances), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(instances), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(instances), longest), dtype=torch.long)
    position_ids = torch.arange(longest).expand(len(instances), longest).clone()
    segment_ids = torch.zeros((len(instances), longest), dtype=torch.long)
    for row, (instance, length) in enumerate(zip(instances, lengths)):
        input_ids[row, :length] = instance['input_ids']
        labels[row, :length] = instance['labels']
        attention_mask[row, :length] = 1
        packed = instance.get('sample_lengths')
        start = 0
        for segment, sample_length in enumerate(packed.tolist() if packed is not None else [length], start=1):
            position_ids[row, start:start + sample_length] = torch.arange(sample_length)
            segment_ids[row, start:start + sample_length] = segment
            start += sample_length
    pixel_values, image_flags = _tiles(instances)
    data = {'input_ids': input_ids, 'labels': labels, 'attention_mask': attention_mask,
            'position_ids': position_ids, 'segment_ids': segment_ids, 'pixel_values': pixel_values,
            'image_flags': image_flags}
    return {'data': data, 'data_samples': None}


def _tiles(instances: List[Dict[str, Any]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every instance's tiles in order with their flags; one blank tile flagged 0 when there are none."""
    pixel_values = torch.cat([instance['pixel_values'] for instance in instances])
    image_flags = torch.cat([instance['image_flags'] for instance in instances])
    if pixel_values.shape[0] == 0:
        pixel_values = torch.zeros((1, *pixel_values.shape[1:]), dtype=pixel_values.dtype)
        image_flags = torch.zeros(1, dtype=torch.long)
    return pixel_values, image_flags


def _pad_id(instances: List[Dict[str, Any]], pad_token_id: Optional[int]) -> int:
    if pad_token_id is not None:
        return pad_token_id
    pad_ids = {instance['pad_token_id'] for instance in instances}
    if len(pad_ids) != 1:
        raise ValueError(f'the batch mixes pad ids {sorted(pad_ids)}; expected samples of one tokenizer')
    return pad_ids.pop()


def preference_collate_fn(instances: List[Dict[str, Any]], pack_pairs: bool = True,
                          pad_token_id: Optional[int] = None) -> Dict[str, Any]:
    """Preference pairs (PreferenceDataset items) -> the model input of P pairs.

    `pack_pairs`: row i holds pair i as two segments, prompt + chosen then prompt + rejected, attending within each
    (as packed SFT rows do); else rows 0..P-1 are the chosen sequences and rows P..2P-1 the rejected ones. The keys
    are internvl_collate_fn's, plus
      sequence_ids   (R, L) long, P + i on pair i's rejected sequence, i on its chosen one, -1 on padding
      tile_order     (N,) long, the real tile (in pixel_values order) each image span of the rows takes: every
                     pair's media are in pixel_values once and the model encodes them once for both answers
    """
    if not instances:
        raise ValueError('preference_collate_fn got an empty batch')
    pad_token_id = _pad_id(instances, pad_token_id)
    pairs = len(instances)
    sequences = []   # (row, sequence id, ids, labels)
    for pair, instance in enumerate(instances):
        prompt = instance['prompt_ids']
        unsupervised = torch.full_like(prompt, IGNORE_INDEX)
        for offset, name in ((0, 'chosen'), (pairs, 'rejected')):
            row = pair if pack_pairs else pair + offset
            sequences.append((row, pair + offset, torch.cat([prompt, instance[f'{name}_ids']]),
                              torch.cat([unsupervised, instance[f'{name}_labels']])))
    rows = pairs if pack_pairs else 2 * pairs
    row_lengths = [0] * rows
    for row, _, ids, _ in sequences:
        row_lengths[row] += len(ids)
    longest = max(row_lengths)
    input_ids = torch.full((rows, longest), pad_token_id, dtype=torch.long)
    labels = torch.full((rows, longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((rows, longest), dtype=torch.long)
    position_ids = torch.arange(longest).expand(rows, longest).clone()
    segment_ids = torch.zeros((rows, longest), dtype=torch.long)
    sequence_ids = torch.full((rows, longest), -1, dtype=torch.long)
    filled = [0] * rows
    for row, sequence, ids, sequence_labels in sequences:
        span = slice(filled[row], filled[row] + len(ids))
        input_ids[row, span], labels[row, span] = ids, sequence_labels
        attention_mask[row, span] = 1
        position_ids[row, span] = torch.arange(len(ids))
        segment_ids[row, span] = 2 if pack_pairs and sequence >= pairs else 1
        sequence_ids[row, span] = sequence
        filled[row] = span.stop
    real_tiles = [int(instance['image_flags'].sum()) for instance in instances]
    first_tile = torch.cumsum(torch.tensor([0] + real_tiles), 0).tolist()
    tiles_of = [torch.arange(first_tile[i], first_tile[i] + real_tiles[i]) for i in range(pairs)]
    order = [tiles for tiles in tiles_of for _ in range(2)] if pack_pairs else tiles_of + tiles_of
    pixel_values, image_flags = _tiles(instances)
    data = {'input_ids': input_ids, 'labels': labels, 'attention_mask': attention_mask,
            'position_ids': position_ids, 'segment_ids': segment_ids, 'sequence_ids': sequence_ids,
            'pixel_values': pixel_values, 'image_flags': image_flags, 'tile_order': torch.cat(order).long()}
    return {'data': data, 'data_samples': None}
