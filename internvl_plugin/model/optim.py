"""The optimizer of the official recipes, with a learning rate per part that survives `xtuner train --deepspeed`.

XTuner's DeepSpeed path keeps only `optim_wrapper.optimizer` and drops MMEngine's `paramwise_cfg`, so per-part
settings live in the optimizer itself. The model marks each parameter with the part it belongs to.
"""
from typing import Dict, Iterable, List, Optional, Tuple

import torch

PART_ATTRIBUTE = 'internvl_part'
PARTS = ('vision_model', 'mlp1', 'language_model')


def mark_parts(network: torch.nn.Module) -> None:
    """Records on every parameter which part of the network (ViT, projector, LLM) holds it."""
    for part in PARTS:
        for param in getattr(network, part).parameters():
            setattr(param, PART_ATTRIBUTE, part)


class InternVLAdamW(torch.optim.AdamW):
    """AdamW as the official fine-tuning applies it (through the HF Trainer): no weight decay on biases and norm
    weights (1-D parameters). `vit_lr`, `mlp_lr` and `llm_lr` give the ViT, the MLP projector and the LLM their own
    learning rate (None: `lr`); schedulers scale every group alike. Frozen parameters are left out."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3, vit_lr: Optional[float] = None,
                 mlp_lr: Optional[float] = None, llm_lr: Optional[float] = None, weight_decay: float = 0.0,
                 **kwargs):
        part_lr = {'vision_model': vit_lr, 'mlp1': mlp_lr, 'language_model': llm_lr}
        groups: Dict[Tuple[float, float], List[torch.nn.Parameter]] = {}
        for param in params:
            if not param.requires_grad:
                continue
            part = getattr(param, PART_ATTRIBUTE, None)
            group_lr = part_lr.get(part) if part_lr.get(part) is not None else lr
            decay = weight_decay if param.ndim > 1 else 0.0
            groups.setdefault((group_lr, decay), []).append(param)
        if not groups:
            raise ValueError('InternVLAdamW: no parameter trains (everything is frozen)')
        super().__init__([{'params': group, 'lr': group_lr, 'weight_decay': decay}
                          for (group_lr, decay), group in groups.items()], lr=lr, weight_decay=weight_decay, **kwargs)
