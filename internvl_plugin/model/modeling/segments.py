"""Rows that hold several samples (packing): attention kept within each sample, and the loss weighed per sample.

`segment_ids` (B, L) numbers the samples of a row 1..k and marks padding 0 (see dataset/collate.py).
"""
from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOSS_REDUCTIONS = ('token', 'sample', 'square')


def is_packed(segment_ids: Optional[torch.Tensor]) -> bool:
    return segment_ids is not None and bool((segment_ids > 1).any())


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) additive mask for SDPA / eager attention: a token sees the earlier tokens of its own sample.
    Padding sees itself only, so no row of the softmax is empty."""
    length = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (same & causal) | torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def token_weights(labels: torch.Tensor, segment_ids: Optional[torch.Tensor], reduction: str) -> torch.Tensor:
    """Per supervised token: 1 ('token'), 1/n ('sample') or 1/sqrt(n) ('square'), n = its sample's supervised
    tokens; 0 elsewhere. `labels` and `segment_ids` are aligned (both already shifted)."""
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss_reduction '{reduction}' is not one of {LOSS_REDUCTIONS}")
    supervised = labels != IGNORE_INDEX
    if reduction == 'token':
        return supervised.float()
    if segment_ids is None:
        segment_ids = torch.ones_like(labels)
    segments = int(segment_ids.max()) + 1
    sample = segment_ids + segments * torch.arange(labels.shape[0], device=labels.device)[:, None]
    counts = torch.bincount(sample[supervised], minlength=segments * labels.shape[0])[sample].float()
    per_token = 1.0 / counts.clamp(min=1) if reduction == 'sample' else counts.clamp(min=1).rsqrt()
    return per_token * supervised


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, segment_ids: Optional[torch.Tensor] = None,
                   reduction: str = 'token') -> torch.Tensor:
    """sum(weight * cross-entropy) / sum(weight) over next-token predictions: the token mean for 'token', the mean
    of per-sample means for 'sample'. A batch without supervised tokens gives 0 (with a graph), not NaN."""
    shift_labels = labels[:, 1:].to(logits.device)
    weights = token_weights(shift_labels, None if segment_ids is None else segment_ids[:, 1:], reduction)
    losses = F.cross_entropy(logits[:, :-1, :].float().reshape(-1, logits.shape[-1]), shift_labels.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction='none')
    return (losses * weights.reshape(-1)).sum() / weights.sum().clamp(min=1)
