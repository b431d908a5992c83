"""Rows that hold several samples (packing): attention kept within each sample, and the loss weighed per sample.

`segment_ids` (B, L) numbers the samples of a row 1..k and marks padding 0 (see dataset/collate.py).

Attention follows transformers' convention for packed rows: position ids restart at 0 where a sample starts.
Flash attention 2 then runs variable-length; for SDPA, `segment_sdpa` (installed as transformers' 'sdpa') runs
one causal SDPA per sample, so a pack costs the sum of its samples' squared lengths instead of its own squared
length and no (L, L) mask is built. Without restarts it is transformers' own SDPA, unchanged.
"""
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
LOSS_REDUCTIONS = ('token', 'sample', 'square')
LOSS_CHUNK_ROWS = 2048  # supervised tokens whose logits exist at once: 3.5 GB at a 150k vocabulary


def is_packed(segment_ids: Optional[torch.Tensor]) -> bool:
    return segment_ids is not None and bool((segment_ids > 1).any())


def sample_starts(position_ids: torch.Tensor) -> Optional[torch.Tensor]:
    """Offsets in the flattened (B*L) tokens where samples start (rows start one too), with the total at the end;
    None when no row holds more than one sample."""
    restarts = position_ids[:, 1:] == 0
    if not bool(restarts.any()):
        return None
    starts = torch.zeros_like(position_ids, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = restarts
    total = torch.tensor([position_ids.numel()], device=position_ids.device)
    return torch.cat([starts.reshape(-1).nonzero().reshape(-1), total])


def per_sample_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, starts: torch.Tensor,
                         scaling: Optional[float], dropout: float) -> torch.Tensor:
    """Causal SDPA within each sample. query (B, H, L, D), key/value (B, H_kv, L, D) -> (B, L, H, D).

    The rows are joined into one (1, H, B*L, D) row: torch 2.5 runs its fused CPU kernel on 4-D inputs only."""
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    flat = [t.transpose(0, 1).reshape(1, t.shape[1], batch * length, dim) for t in (query, key, value)]
    q, k, v = flat[0], flat[1].repeat_interleave(groups, dim=1), flat[2].repeat_interleave(groups, dim=1)
    bounds = starts.tolist()
    parts = [F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], dropout_p=dropout,
                                            is_causal=True, scale=scaling) for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(parts, dim=2).reshape(heads, batch, length, dim).permute(1, 2, 0, 3).contiguous()


def segment_sdpa(original: Callable) -> Callable:
    """transformers' SDPA attention function, confined to each sample when position ids restart in a row."""
    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                  **kwargs) -> Tuple[torch.Tensor, None]:
        position_ids = kwargs.get('position_ids')
        starts = None if position_ids is None or query.shape[2] == 1 else sample_starts(position_ids)
        if starts is None:
            return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        return per_sample_attention(query, key, value, starts, scaling, dropout), None
    attention.wraps_sdpa = original
    return attention


def per_sample_mask_marker(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The attention mask to hand the LLM with packed rows under `segment_sdpa`: an empty 4-D mask.

    transformers takes a 4-D mask as already built, so it skips the (L, L) block-diagonal mask that 4.57 builds
    from restarting position ids and per-sample attention never reads (a fifth of a tiny model's packed step on
    CPU). Were it ever read (the wrapper not installed), SDPA would fail on its shape, not attend across samples."""
    return torch.empty(1, 1, 0, 0, device=device, dtype=dtype)


def install_segment_sdpa() -> None:
    """Makes transformers' 'sdpa' attention per-sample on packed rows (idempotent)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    current = ALL_ATTENTION_FUNCTIONS['sdpa']
    if not hasattr(current, 'wraps_sdpa'):
        ALL_ATTENTION_FUNCTIONS['sdpa'] = segment_sdpa(current)


def block_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype, window: Optional[int] = None) -> torch.Tensor:
    """(B, 1, L, L) additive mask for eager attention: a token sees the earlier tokens of its own sample (the last
    `window` of them, itself included, for a sliding-window layer). Padding sees itself only, so no row of the
    softmax is empty."""
    length = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    if window is not None:
        causal = causal & ~torch.ones_like(causal).tril(-window)
    allowed = (same & causal) | torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def block_causal_masks(segment_ids: torch.Tensor, dtype: torch.dtype,
                       llm_config: Any) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
    """The eager mask of packed rows; for an LLM with sliding-window layers (GPT-OSS) one per kind of layer, keyed
    as transformers takes them, since a single mask given would replace the window too."""
    full = block_causal_mask(segment_ids, dtype)
    if 'sliding_attention' not in (getattr(llm_config, 'layer_types', None) or []):
        return full
    return {'full_attention': full,
            'sliding_attention': block_causal_mask(segment_ids, dtype, llm_config.sliding_window)}


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


def _cross_entropy(output_layer: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output_layer(hidden).float(), targets, reduction='none')


def token_cross_entropy(output_layer: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (fp32) of each hidden row against its target. Beyond LOSS_CHUNK_ROWS rows the logits are made a
    chunk at a time and again in backward, so long answers hold one chunk's logits, not all of them."""
    if rows.shape[0] <= LOSS_CHUNK_ROWS:
        return _cross_entropy(output_layer, rows, targets)
    return torch.cat([checkpoint(_cross_entropy, output_layer, chunk_rows, chunk_targets, use_reentrant=False)
                      for chunk_rows, chunk_targets in zip(rows.split(LOSS_CHUNK_ROWS), targets.split(LOSS_CHUNK_ROWS))])


def causal_lm_loss(hidden: torch.Tensor, output_layer: nn.Module, labels: torch.Tensor,
                   segment_ids: Optional[torch.Tensor] = None, reduction: str = 'token') -> torch.Tensor:
    """sum(weight * cross-entropy) / sum(weight) over next-token predictions: the token mean for 'token', the mean
    of per-sample means for 'sample'. A batch without supervised tokens gives 0 (with a graph), not NaN.

    Logits are made only where a label is supervised: image and prompt tokens (most of a multimodal sample) need
    none, and a 16k-token pack's fp32 logits over a 150k vocabulary take about 10 GB (see token_cross_entropy)."""
    shift_labels = labels[:, 1:].to(hidden.device)
    weights = token_weights(shift_labels, None if segment_ids is None else segment_ids[:, 1:], reduction)
    supervised = shift_labels != IGNORE_INDEX
    rows, targets, row_weights = hidden[:, :-1][supervised], shift_labels[supervised], weights[supervised]
    total = (token_cross_entropy(output_layer, rows, targets) * row_weights).sum()
    return total / weights.sum().clamp(min=1)
