"""4-bit (QLoRA) settings: nf4, double quantisation, bf16 compute."""
from typing import Collection

import torch
from torch import nn


def bnb_4bit_config():
    """The transformers quantisation config for the LLM: nf4 + double quantisation, bf16 compute."""
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def quantize_linears_4bit(module: nn.Module, keep: Collection[nn.Module] = ()) -> nn.Module:
    """Swaps every nn.Linear of `module` but those in `keep` for a bitsandbytes nf4 Linear4bit: the vision encoder,
    a random-initialised LLM (which from_config builds without quantising; its lm_head is kept, as transformers
    keeps it when it quantises a checkpoint), or the expert layers made after transformers quantised the rest.

    The weights are quantised when the module is next moved to a device (bitsandbytes' convention). Meta weights
    have no values to quantise (a memory estimate, internvl_plugin.memory): they become layers that hold and compute
    what Linear4bit would."""
    for name, child in list(module.named_children()):
        if any(child is kept for kept in keep) or hasattr(getattr(child, 'weight', None), 'quant_state'):
            continue  # kept, or a bitsandbytes Linear4bit already (an nn.Linear whose weight has a quant_state)
        if isinstance(child, nn.Linear) and child.weight.is_meta:
            from ..memory.packed_4bit import Packed4bitLinear
            setattr(module, name, Packed4bitLinear(child))
        elif isinstance(child, nn.Linear):
            import bitsandbytes as bnb
            quantized = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=torch.bfloat16, compress_statistics=True, quant_type='nf4',
                                          device='meta')
            quantized.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                                 quant_type='nf4')
            if child.bias is not None:
                quantized.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, name, quantized)
        else:
            quantize_linears_4bit(child, keep)
    return module


def keep_training_layout(module: nn.Module) -> nn.Module:
    """Turns off bitsandbytes' CPU inference layout in every 4-bit layer of `module`. On CPUs with AVX512-BF16,
    Linear4bit repacks its weight in place on its first eval-mode forward without gradients (a preference step's
    reference pass), and from then on computes outside autograd, so the layers before it lose their gradients;
    a layer of fewer than 32 outputs (a small MoE router) fails to repack at all."""
    for child in module.modules():
        if hasattr(child, 'support_avx512bf16_for_cpu'):
            child.support_avx512bf16_for_cpu = False
    return module
