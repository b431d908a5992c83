"""Model FLOPs of one training step: the numerator of model FLOPs utilisation (MFU).

Counts the matrix multiplications the model needs for a batch's real tokens and real tiles: linear layers (and the
ViT's patch embedding) per token, the output layer per supervised token (the loss makes no other logits), attention
per tile and per sample, the LLM's over the causal half. Padding and activation-checkpointing recomputation are
work the GPU does but not model FLOPs, so MFU shows what they cost.
Backward repeats a matmul once for the gradient of its input where gradients flow through its part (anything in
or before it trains) and once more for its weight where that trains; attention backward is twice its forward.
A LoRA-tuned LLM is counted as gradients flowing through all of it (its first layer's q/k/v need none when nothing
before trains: under 1 % of a released model's LLM).
"""
from dataclasses import dataclass
from typing import Dict, Iterable

import torch
from torch import nn

from .modeling.internvl_chat import InternVLChatModel
from .modeling.segments import IGNORE_INDEX


@dataclass
class StepFlops:
    matmul: int            # linear layers and the patch embedding, forward and backward
    vision_attention: int  # the ViT's scores and weighted sums over each tile's tokens
    llm_attention: int     # the LLM's, over each sample's causal half

    @property
    def total(self) -> int:
        return self.matmul + self.vision_attention + self.llm_attention


def _trains(module: nn.Module) -> bool:
    return any(param.requires_grad for param in module.parameters())


def _matmul_flops(modules: Iterable[nn.Module], positions: int, gradients_flow: bool) -> int:
    """Forward and backward FLOPs of a part's linear layers (and convolutions) applied at `positions` places."""
    flops = 0
    for module in modules:
        if isinstance(module, nn.Linear):
            macs, input_gradient = module.in_features * module.out_features, gradients_flow
        elif isinstance(module, nn.Conv2d):  # the patch embedding: its input is the image, which needs no gradient
            macs, input_gradient = module.weight[0].numel() * module.out_channels, False
        else:
            continue
        passes = 1 + int(input_gradient) + int(module.weight.requires_grad)
        flops += 2 * macs * positions * passes
    return flops


def training_step_flops(network: InternVLChatModel, data: Dict[str, torch.Tensor]) -> StepFlops:
    """Model FLOPs of forward + backward on a collated batch (internvl_collate_fn's `data`)."""
    vision, mlp1, language = network.vision_model, network.mlp1, network.language_model
    vision_flows = _trains(vision)
    mlp1_flows = vision_flows or _trains(mlp1)
    llm_flows = mlp1_flows or _trains(language)

    tiles = int(data['image_flags'].sum())
    grid = vision.config.image_size // vision.config.patch_size
    vision_tokens = grid * grid + 1  # patches and the class token
    segment_ids = data['segment_ids']
    rows = torch.arange(segment_ids.shape[0], device=segment_ids.device).unsqueeze(1)
    sample_ids = (rows * (int(segment_ids.max()) + 1) + segment_ids)[segment_ids > 0]
    sample_lengths = torch.bincount(sample_ids).double()
    tokens = int(sample_lengths.sum())
    supervised = int((data['labels'][:, 1:] != IGNORE_INDEX).sum())
    output_layer = language.get_output_embeddings()
    decoder = [module for module in language.modules() if module is not output_layer]

    vision_layers = vision.encoder.layers[:vision.layers_run(network.select_layer)]
    matmul = (_matmul_flops(vision.embeddings.modules(), tiles * grid * grid, vision_flows)
              + _matmul_flops(vision_layers.modules(), tiles * vision_tokens, vision_flows)
              + _matmul_flops(mlp1.modules(), tiles * network.tokens_per_tile, mlp1_flows)
              + _matmul_flops(decoder, tokens, llm_flows)
              + _matmul_flops([output_layer], supervised, llm_flows))

    vision_passes = 3 if vision_flows else 1
    vision_attention = (2 * 2 * vision_tokens ** 2 * vision.config.hidden_size * tiles
                        * len(vision_layers) * vision_passes)
    config = language.config
    head_dim = getattr(config, 'head_dim', None) or config.hidden_size // config.num_attention_heads
    squares = int((sample_lengths ** 2).sum())
    # Half of the 2 * 2 * s^2 * width FLOPs of scores and weighted sums over all s^2 pairs.
    llm_attention = (2 * squares * config.num_attention_heads * head_dim
                     * config.num_hidden_layers * (3 if llm_flows else 1))
    return StepFlops(matmul=matmul, vision_attention=vision_attention, llm_attention=llm_attention)
