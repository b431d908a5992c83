"""Qwen3-MoE under fake tensors: which expert each token goes to is a value of the router's output, which a fake
tensor does not have, so the estimate routes by a rule of its own, `balanced_choice`: every expert the same number
of tokens. The activations an MoE layer saves for backward are the same for any routing: each expert saves what its
tokens need, and the tokens' slots add up to tokens x top_k. Only the transients of the busiest expert depend on it.

The experts run as batched matmuls over all experts (the same tensors as their eager loop, without its thousands of
small operations per step, which under fake tensors take minutes): transformers 5's 3-D experts here, per-expert
layers (QLoRA's ExpertLinears, transformers 4's MoE block) as the StackedExperts the fake model holds instead.
ExpertLinears are even built with one expert per group (`representative_experts`), which stack_experts stacks
group-size times: peft then wraps 4 expert layers a projection, not 128.

While the estimate runs, each MoE layer's forward is replaced by one that computes the same tensors of the same
sizes (the router's logits and weights, transformers' one-hot expert mask, the experts' matmuls) with that routing."""
from contextlib import contextmanager
from typing import Callable, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..model.modeling.moe import ExpertLinears
from .stacked_experts import StackedExperts, expert_slots, group_of_expert, group_starts

try:
    from transformers.models.qwen3_moe import modeling_qwen3_moe
except ImportError:   # transformers < 4.51: no Qwen3-MoE to estimate
    modeling_qwen3_moe = None

Choice = Callable[[int, int, int, torch.device], torch.Tensor]


def balanced_choice(tokens: int, top_k: int, num_experts: int, device: torch.device) -> torch.Tensor:
    """(tokens, top_k) expert indices: token t takes experts t*k .. t*k+k-1 modulo the expert count."""
    slots = torch.arange(tokens, device=device)[:, None] * top_k + torch.arange(top_k, device=device)
    return slots % num_experts


def _router(router: nn.Module, forward: Callable, choice: Choice) -> Callable:
    def routed(hidden_states: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, weights, chosen = forward(hidden_states)
        return logits, weights, choice(chosen.shape[0], chosen.shape[1], router.num_experts, chosen.device)
    return routed


def _fused_experts(experts: nn.Module) -> Callable:
    """transformers 5's 3-D experts, all experts in one batched matmul (their slices one by one hold the same
    tensors, slower by the number of experts), after the one-hot mask of num_experts + 1 classes their eager form
    holds while it runs."""
    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mask = F.one_hot(top_k_index, num_classes=experts.num_experts + 1)
        tokens, slots = expert_slots(*top_k_index.shape, experts.num_experts, hidden_states.device)
        gate, up = torch.bmm(hidden_states[tokens], experts.gate_up_proj.transpose(1, 2)).chunk(2, dim=-1)
        y = torch.bmm(experts.act_fn(gate) * up, experts.down_proj.transpose(1, 2)) * top_k_weights[tokens, slots, None]
        out = torch.zeros_like(hidden_states).index_add_(0, tokens.flatten(), y.flatten(0, 1).to(hidden_states.dtype))
        del mask
        return out
    return forward


def _sparse_block(block: nn.Module) -> Callable:
    """transformers 4's Qwen3MoeSparseMoeBlock: its router, softmax and top-k, then its experts (stacked)."""
    def forward(hidden_states: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        batch, length, width = hidden_states.shape
        flat = hidden_states.view(-1, width)
        router_logits = block.gate(flat)
        weights, _ = torch.topk(F.softmax(router_logits, dim=1, dtype=torch.float), block.top_k, dim=-1)
        if block.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        chosen = balanced_choice(flat.shape[0], block.top_k, block.num_experts, flat.device)
        with torch.no_grad():
            mask = F.one_hot(chosen, num_classes=block.num_experts).permute(2, 1, 0)
        out = block.experts(flat, chosen, weights.to(flat.dtype))
        del mask
        return out.reshape(batch, length, width), router_logits
    return forward


def _innermost(module: nn.Module) -> nn.Module:
    """The module peft's wrappers (one per LoRA-targeted parameter) hold."""
    while hasattr(module, 'base_layer'):
        module = module.base_layer
    return module


def _replacements(model: nn.Module) -> List[Tuple[nn.Module, Callable]]:
    if modeling_qwen3_moe is None:
        return []
    found = []
    for block in model.modules():
        if not isinstance(block, modeling_qwen3_moe.Qwen3MoeSparseMoeBlock):
            continue
        if hasattr(block, 'top_k'):                   # transformers 4: the block routes, a linear gate
            found.append((block, _sparse_block(block)))
            continue
        found.append((block.gate, _router(block.gate, block.gate.forward, balanced_choice)))
        experts = _innermost(block.experts)
        if not isinstance(experts, StackedExperts):   # transformers 5's 3-D experts (QLoRA's are stacked)
            found.append((experts, _fused_experts(experts)))
    return found


@contextmanager
def representative_experts() -> Iterator[None]:
    """ExpertLinears made inside hold the first expert of each StackedExperts group only, standing for the group
    (stack_experts repeats it): building the 30B-A3B QLoRA model with its 18,432 LoRA-wrapped expert layers took
    over a minute. The layer still knows its real expert count."""
    original = ExpertLinears.__init__

    def build(self: ExpertLinears, gate_up: torch.Tensor, down: torch.Tensor, act_fn: nn.Module) -> None:
        starts = group_starts(gate_up.shape[0])
        original(self, gate_up[starts], down[starts], act_fn)
        self.num_experts = gate_up.shape[0]

    ExpertLinears.__init__ = build
    try:
        yield
    finally:
        ExpertLinears.__init__ = original


def stack_experts(model: nn.Module) -> int:
    """Replaces each MoE layer's per-expert layers (QLoRA's ExpertLinears, transformers 4's list of expert MLPs) by
    StackedExperts, before the fake weights are made; the number replaced. An ExpertLinears built under
    `representative_experts` gives each group its one expert, repeated: the same stacked tensors."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, ExpertLinears):
            held = [module._modules[str(i)] for i in range(sum(key.isdigit() for key in module._modules))]
            group = list(range(module.num_experts)) if len(held) == module.num_experts \
                else group_of_expert(module.num_experts)
            experts, act_fn = [held[g] for g in group], module.act_fn
        elif modeling_qwen3_moe is not None and isinstance(module, modeling_qwen3_moe.Qwen3MoeSparseMoeBlock) \
                and isinstance(module.experts, nn.ModuleList):
            name, experts, act_fn = f'{name}.experts', list(module.experts), module.experts[0].act_fn
        else:
            continue
        found.append((name, StackedExperts(experts, act_fn)))
    for name, stacked in found:
        parent, _, child = name.rpartition('.')
        setattr(model.get_submodule(parent), child, stacked)
    return len(found)


@contextmanager
def estimated_routing(model: nn.Module) -> Iterator[int]:
    """Qwen3-MoE layers route by the estimate's rules inside; yields how many modules were replaced (0: no
    Qwen3-MoE)."""
    replaced = _replacements(model)
    for module, forward in replaced:
        module.forward = forward
    try:
        yield len(replaced)
    finally:
        for module, _ in replaced:
            del module.forward
