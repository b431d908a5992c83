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
from typing import Any, Dict, List, Optional

import torch

from .templates import IGNORE_INDEX


def internvl_collate_fn(instances: List[Dict[str, Any]], pad_token_id: Optional[int] = None) -> Dict[str, Any]:
    if not instances:
        raise ValueError('internvl_collate_fn got an empty batch')
    instances = [row for instance in instances for row in instance.get('rows', [instance])]
    if pad_token_id is None:
        pad_ids = {instance['pad_token_id'] for instance in instances}
        if len(pad_ids) != 1:
            raise ValueError(f'the batch mixes pad ids {sorted(pad_ids)}; expected samples of one tokenizer')
        pad_token_id = pad_ids.pop()
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
    pixel_values = torch.cat([instance['pixel_values'] for instance in instances])
    image_flags = torch.cat([instance['image_flags'] for instance in instances])
    if pixel_values.shape[0] == 0:
        pixel_values = torch.zeros((1, *pixel_values.shape[1:]), dtype=pixel_values.dtype)
        image_flags = torch.zeros(1, dtype=torch.long)
    data = {'input_ids': input_ids, 'labels': labels, 'attention_mask': attention_mask,
            'position_ids': position_ids, 'segment_ids': segment_ids, 'pixel_values': pixel_values,
            'image_flags': image_flags}
    return {'data': data, 'data_samples': None}
