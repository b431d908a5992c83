"""Qwen3-MoE under fake tensors: which expert each token goes to is a value of the router's output, which a fake
tensor does not have, so the estimate routes by a rule of its own. The activations an MoE layer saves for backward
are the same for any routing: each expert saves what its tokens need, and the tokens' slots add up to tokens x
top_k. Only the transients of the busiest expert depend on it.

- transformers 5's 3-D experts (full fine-tune, LoRA): `balanced_choice`, every expert the same number of tokens,
  run as one batched matmul over the experts (the same tensors as their eager loop, without its thousands of small
  operations per step, which under fake tensors take minutes).
- experts that are modules, one per expert (QLoRA's ExpertLinears, transformers 4's MoE block): `concentrated_choice`,
  every token to experts 0 .. top_k-1, so that the loop runs top_k experts instead of all. Their transients are
  those of top_k experts with all the tokens (larger by num_experts / top_k than an even router's: a fraction of a
  GiB at the released sizes; the estimate errs high by that).

While the estimate runs, each MoE layer's forward is replaced by one that computes the same tensors of the same
sizes (the router's logits and weights, transformers' one-hot expert mask, the experts' matmuls) with that routing."""
from contextlib import contextmanager
from typing import Callable, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..model.modeling.moe import ExpertLinears, run_experts

try:
    from transformers.models.qwen3_moe import modeling_qwen3_moe
except ImportError:   # transformers < 4.51: no Qwen3-MoE to estimate
    modeling_qwen3_moe = None

Choice = Callable[[int, int, int, torch.device], torch.Tensor]


def balanced_choice(tokens: int, top_k: int, num_experts: int, device: torch.device) -> torch.Tensor:
    """(tokens, top_k) expert indices: token t takes experts t*k .. t*k+k-1 modulo the expert count."""
    slots = torch.arange(tokens, device=device)[:, None] * top_k + torch.arange(top_k, device=device)
    return slots % num_experts


def concentrated_choice(tokens: int, top_k: int, num_experts: int, device: torch.device) -> torch.Tensor:
    """(tokens, top_k) expert indices: every token takes experts 0 .. top_k-1."""
    return torch.arange(top_k, device=device).expand(tokens, top_k)


def _router(router: nn.Module, forward: Callable, choice: Choice) -> Callable:
    def routed(hidden_states: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, weights, chosen = forward(hidden_states)
        return logits, weights, choice(chosen.shape[0], chosen.shape[1], router.num_experts, chosen.device)
    return routed


def _expert_slots(tokens: int, top_k: int, num_experts: int, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """(num_experts, n) token and top-k slot indices of each expert's tokens under balanced_choice, which gives
    flat slot s (token s // top_k) to expert s % num_experts; an expert with one token fewer repeats its last."""
    per_expert = -(-tokens * top_k // num_experts)
    expert = torch.arange(num_experts, device=device)[:, None]
    flat = torch.arange(per_expert, device=device)[None, :] * num_experts + expert
    flat = flat.clamp(max=tokens * top_k - 1)
    return flat // top_k, flat % top_k


def _fused_experts(experts: nn.Module) -> Callable:
    """transformers 5's 3-D experts, all experts in one batched matmul (their slices one by one hold the same
    tensors, slower by the number of experts), after the one-hot mask of num_experts + 1 classes their eager form
    holds while it runs."""
    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mask = F.one_hot(top_k_index, num_classes=experts.num_experts + 1)
        tokens, slots = _expert_slots(*top_k_index.shape, experts.num_experts, hidden_states.device)
        gate, up = torch.bmm(hidden_states[tokens], experts.gate_up_proj.transpose(1, 2)).chunk(2, dim=-1)
        y = torch.bmm(experts.act_fn(gate) * up, experts.down_proj.transpose(1, 2)) * top_k_weights[tokens, slots, None]
        out = torch.zeros_like(hidden_states).index_add_(0, tokens.flatten(), y.flatten(0, 1).to(hidden_states.dtype))
        del mask
        return out
    return forward


def _sparse_block(block: nn.Module) -> Callable:
    """transformers 4's Qwen3MoeSparseMoeBlock: its router, softmax and top-k, then its experts one MLP each."""
    def forward(hidden_states: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        batch, length, width = hidden_states.shape
        flat = hidden_states.view(-1, width)
        router_logits = block.gate(flat)
        weights, _ = torch.topk(F.softmax(router_logits, dim=1, dtype=torch.float), block.top_k, dim=-1)
        if block.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        chosen = concentrated_choice(flat.shape[0], block.top_k, block.num_experts, flat.device)
        with torch.no_grad():
            mask = F.one_hot(chosen, num_classes=block.num_experts).permute(2, 1, 0)
        out = run_experts(flat, chosen, weights.to(flat.dtype), block.num_experts,
                          lambda index, x: block.experts[index](x))
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
        experts = _innermost(block.experts)
        if isinstance(experts, nn.ModuleList):                                    # transformers 4
            found.append((block, _sparse_block(block)))
        elif isinstance(experts, ExpertLinears):                                  # QLoRA on transformers 5
            found.append((block.gate, _router(block.gate, block.gate.forward, concentrated_choice)))
        else:                                                                     # transformers 5's 3-D experts
            found.append((block.gate, _router(block.gate, block.gate.forward, balanced_choice)))
            found.append((experts, _fused_experts(experts)))
    return found


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
