"""The official schedule (linear warmup over a fraction of training, then cosine to 0) for datasets of any size.

MMEngine turns epoch fractions into iterations by truncating, so a 3 % warmup on an epoch shorter than 34
iterations becomes `end=0` and the run stops with "end should be larger than begin" (and a one-iteration LinearLR
never leaves its start factor). These round the warmup up to whole iterations as the HF Trainer of the official
recipes does (`ceil(ratio * steps)`, at least one): the learning rate reaches its peak at that iteration, where
the cosine decay begins.
"""
import math
from typing import Optional

from mmengine.optim import CosineAnnealingLR, LinearLR


def _warmup_iterations(fraction: float, epoch_length: Optional[int], by_epoch: bool, name: str) -> int:
    if not by_epoch or not epoch_length:
        raise ValueError(f'{name}: converting to iterations needs by_epoch=True and an epoch length, got '
                         f'by_epoch={by_epoch}, epoch_length={epoch_length}')
    return max(1, math.ceil(fraction * epoch_length))


class WarmupLR(LinearLR):
    """Linear warmup from `start_factor` to the peak over `end` epochs, rounded up to whole iterations."""

    @classmethod
    def build_iter_from_epoch(cls, *args, begin: float = 0, end: float = 0, by_epoch: bool = True,
                              epoch_length: Optional[int] = None, **kwargs) -> 'WarmupLR':
        if begin != 0:
            raise ValueError(f'WarmupLR starts training (begin=0), got begin={begin}')
        peak = _warmup_iterations(end, epoch_length, by_epoch, cls.__name__)
        return cls(*args, begin=0, end=peak + 1, by_epoch=False, **kwargs)  # LinearLR reaches the peak at end - 1


class CosineLR(CosineAnnealingLR):
    """Cosine decay from the end of `WarmupLR` (same rounding of `begin`) to the end of training."""

    @classmethod
    def build_iter_from_epoch(cls, *args, begin: float = 0, end: float = math.inf, by_epoch: bool = True,
                              epoch_length: Optional[int] = None, **kwargs) -> 'CosineLR':
        first = _warmup_iterations(begin, epoch_length, by_epoch, cls.__name__) if begin else 0
        last = end if end == math.inf else max(round(end * epoch_length), first + 1)
        return cls(*args, begin=first, end=last, by_epoch=False, **kwargs)
