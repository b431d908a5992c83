"""Per-expert layers held as stacked tensors, for the memory estimate.

Under QLoRA a Qwen3-MoE holds each expert as three nn.Linear layers (ExpertLinears; transformers 4's MoE block
too): the 48 layers of 128 experts of InternVL3.5-30B-A3B make 18,432 4-bit layers and 36,864 LoRA matrices. Under
fake tensors every tensor costs the optimizer and the step dispatches of its own, which took the estimate of that
config nine minutes. `StackedExperts` holds the same tensors stacked over groups of experts (the same
bytes: 4-bit codes and statistics or plain weights, LoRA A and B with their dtype and trainability) and runs each
group in batched matmuls with the tensors of the per-expert loop: one expert's dequantised weight at a time, the
LoRA input cast to the adapters' dtype, dropout, and each token's slots among the experts (balanced over them, as
moe_routing.py routes transformers 5's 3-D experts).
"""
from itertools import accumulate
from typing import List, Sequence

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .packed_4bit import Packed4bitLinear

PROJECTIONS = ('gate_proj', 'up_proj', 'down_proj')
# The experts run in groups, one after another, each group as batched matmuls: a group's transients (its tokens'
# inputs, intermediates and, in backward, their gradients) are those of all its experts' slots at once, where the
# per-expert loop's are one expert's. Each group takes half the experts left, down to two last groups of an eighth:
# the peak is reached at the last group in forward (every other group's saved tensors held) and at it again first
# in backward, where an eighth's transients count as eight equal groups' did, while a large group runs when little
# is saved yet. InternVL3.5-30B-A3B QLoRA: 64, 32, 16 and 16 experts, 51.59 GiB as with eight groups of 16 in half the
# operations (the per-expert loop: 50.84); one group of 96 before two of 16: 53.29; one of 112 before one of 16: 55.23.
SMALLEST_GROUP_SHARE = 8


def group_sizes(num_experts: int) -> List[int]:
    """Experts per group, in the order they run."""
    smallest = -(-num_experts // SMALLEST_GROUP_SHARE)
    sizes, left = [], num_experts
    while left > 2 * smallest:
        sizes.append(left // 2)
        left -= left // 2
    return sizes + ([left - smallest, smallest] if left > smallest else [left])


def group_starts(num_experts: int) -> List[int]:
    """Each group's first expert."""
    return [0, *accumulate(group_sizes(num_experts)[:-1])]


def group_of_expert(num_experts: int) -> List[int]:
    """Each expert's group."""
    return [group for group, size in enumerate(group_sizes(num_experts)) for _ in range(size)]


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """torch.stack; meta tensors (the estimate's model before its weights are made fake) have nothing to copy, and
    stacking them went through Python reference kernels: seconds for the 1,128 projections of InternVL3.5-241B."""
    if tensors[0].is_meta:
        return tensors[0].new_empty((len(tensors), *tensors[0].shape))
    return torch.stack(tensors)


class _DequantizedStackedMatmul(torch.autograd.Function):
    """Each expert's x @ W^T with W dequantised for the matmul only (one expert's weight at a time, as the loop),
    in forward and again in backward; only x's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, codes: torch.Tensor, out_features: int) -> torch.Tensor:
        ctx.shape = (out_features, x.shape[-1])
        ctx.codes = codes
        transposed = codes.new_zeros(ctx.shape[::-1], dtype=x.dtype)
        return torch.bmm(x, transposed.expand(x.shape[0], -1, -1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight = ctx.codes.new_zeros(ctx.shape, dtype=grad.dtype)
        return torch.bmm(grad, weight.expand(grad.shape[0], -1, -1)), None, None


class StackedProjection(nn.Module, BaseTunerLayer):
    """One projection (gate, up or down) of every expert of a layer: the frozen weight and the LoRA adapter of each,
    stacked. A peft tuner layer, so that disabling the adapters (a preference model's reference pass) reaches it.

    Plain weights and the LoRA matrices are held transposed, (in, out) per expert, as the batched matmuls take
    them: the same bytes, and no transposing view of each per call (thousands of operations a step)."""

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        tuned = [isinstance(layer, BaseTunerLayer) for layer in layers]
        if any(tuned) and not all(tuned):
            raise ValueError('experts of one layer differ: LoRA on some, not on others')
        bases = [layer.get_base_layer() if isinstance(layer, BaseTunerLayer) else layer for layer in layers]
        if any(base.bias is not None for base in bases):
            raise ValueError('expert layers with a bias: the estimate knows Qwen3-MoE experts, which have none')
        self.stacked = len(layers)   # a module's bytes per expert: the unit ZeRO-3 gathers (step._largest_module_bytes)
        self.out_features = bases[0].out_features
        self.quantized = isinstance(bases[0], Packed4bitLinear)
        # Not `weight`: peft's tuner layers answer that with their base layer's. 4-bit codes as they are.
        weights = [base.weight if self.quantized else base.weight.t() for base in bases]
        self.stacked_weight = nn.Parameter(_stack(weights), requires_grad=bases[0].weight.requires_grad)
        if self.quantized:
            self.register_buffer('stacked_statistics', _stack([base.statistics for base in bases]))
        self.lora_A = self.lora_B = None
        if all(tuned):
            adapters = layers[0].active_adapters
            if len(adapters) != 1:
                raise ValueError(f'experts with {len(adapters)} active LoRA adapters; the estimate takes one')
            name = adapters[0]
            a = [layer.lora_A[name].weight for layer in layers]
            b = [layer.lora_B[name].weight for layer in layers]
            self.lora_A = nn.Parameter(_stack([w.t() for w in a]), requires_grad=a[0].requires_grad)
            self.lora_B = nn.Parameter(_stack([w.t() for w in b]), requires_grad=b[0].requires_grad)
            self.dropout = layers[0].lora_dropout[name]
            self.scaling = layers[0].scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(experts, tokens, in) -> (experts, tokens, out), as peft's LoRA linear computes each expert's."""
        if self.quantized:
            result = _DequantizedStackedMatmul.apply(x, self.stacked_weight, self.out_features)
        else:
            result = torch.bmm(x, self.stacked_weight)
        if self.lora_A is None or self.disable_adapters:
            return result
        dtype = result.dtype
        adapted = torch.bmm(torch.bmm(self.dropout(x.to(self.lora_A.dtype)), self.lora_A), self.lora_B)
        return (result + adapted * self.scaling).to(dtype)


class StackedExperts(nn.Module):
    """A layer's experts (each with gate_proj, up_proj and down_proj) in groups (group_sizes) of stacked
    projections, run one group after another; called as transformers 5's experts module: hidden states, each
    token's top-k experts and their weights."""

    def __init__(self, experts: Sequence[nn.Module], act_fn: nn.Module):
        super().__init__()
        self.num_experts = len(experts)
        self.groups = nn.ModuleList()
        for start, size in zip(group_starts(self.num_experts), group_sizes(self.num_experts)):
            group = nn.Module()
            for name in PROJECTIONS:
                group.add_module(name, StackedProjection([getattr(e, name) for e in experts[start:start + size]]))
            self.groups.append(group)
        self.act_fn = act_fn

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        tokens, slots = expert_slots(*top_k_index.shape, self.num_experts, hidden_states.device)
        out = torch.zeros_like(hidden_states)
        start = 0
        for group in self.groups:
            end = start + group.gate_proj.stacked
            x = hidden_states[tokens[start:end]]
            y = group.down_proj(self.act_fn(group.gate_proj(x)) * group.up_proj(x))
            y = y * top_k_weights[tokens[start:end], slots[start:end], None]
            out.index_add_(0, tokens[start:end].flatten(), y.flatten(0, 1).to(out.dtype))
            start = end
        return out


def expert_slots(tokens: int, top_k: int, num_experts: int, device: torch.device) -> List[torch.Tensor]:
    """(num_experts, n) token and top-k slot indices of each expert's tokens when flat slot s (token s // top_k)
    goes to expert s % num_experts (moe_routing.balanced_choice); an expert with one token fewer repeats its last."""
    per_expert = -(-tokens * top_k // num_experts)
    expert = torch.arange(num_experts, device=device)[:, None]
    flat = torch.arange(per_expert, device=device)[None, :] * num_experts + expert
    flat = flat.clamp(max=tokens * top_k - 1)
    return [flat // top_k, flat % top_k]
