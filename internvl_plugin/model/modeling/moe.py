"""Mixture-of-experts language models (Qwen3-MoE, GPT-OSS): the router's load-balancing loss that training adds.

The loss is the Switch Transformer's, as transformers and the official InternVL3.5 trainer compute it: over the
tokens of all MoE layers, num_experts x sum over experts of (top-k assignments to the expert / tokens) x (the
expert's mean router probability). It is top_k for a perfectly even router and grows as the router favours
some experts, which the coefficient (`router_aux_loss_coef` of the LLM's config) weighs against the LM loss.
"""
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Per MoE family: the LLM config field holding the number of experts.
MOE_EXPERT_COUNT_FIELDS = {'qwen3_moe': 'num_experts', 'gpt_oss': 'num_local_experts'}


def is_moe(family: str) -> bool:
    return family in MOE_EXPERT_COUNT_FIELDS


def load_balancing_loss(router_logits: Sequence[torch.Tensor], num_experts: int, top_k: int,
                        token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The auxiliary loss from each MoE layer's (tokens, num_experts) router logits; `token_mask` (any shape with
    `tokens` elements, 1 for real tokens) leaves padding out."""
    device = router_logits[0].device
    weights = torch.ones(router_logits[0].shape[0], device=device) if token_mask is None else \
        token_mask.reshape(-1).to(device=device, dtype=torch.float32)
    assigned = torch.zeros(num_experts, device=device)
    probability = torch.zeros(num_experts, device=device)
    for logits in router_logits:
        probs = F.softmax(logits.float(), dim=-1)
        chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, num_experts).sum(dim=1).float()
        assigned = assigned + (chosen * weights[:, None]).sum(dim=0)
        probability = probability + (probs * weights[:, None]).sum(dim=0)
    tokens = weights.sum().clamp(min=1) * len(router_logits)
    return num_experts * ((assigned / tokens) * (probability / tokens)).sum()


@dataclass
class RouterAuxLoss:
    """What the network adds to the LM loss of an MoE LLM: `coef` x the load-balancing loss."""
    num_experts: int
    top_k: int
    coef: float

    @classmethod
    def for_llm(cls, family: str, llm_config: Any, coef: Optional[float] = None) -> Optional['RouterAuxLoss']:
        """None for a dense LLM or a zero coefficient; `coef` None takes the LLM config's `router_aux_loss_coef`."""
        if not is_moe(family):
            return None
        coef = float(getattr(llm_config, 'router_aux_loss_coef', 0.0) or 0.0) if coef is None else float(coef)
        if coef == 0:
            return None
        return cls(getattr(llm_config, MOE_EXPERT_COUNT_FIELDS[family]), llm_config.num_experts_per_tok, coef)

    def __call__(self, router_logits: Sequence[torch.Tensor], token_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self.coef * load_balancing_loss(router_logits, self.num_experts, self.top_k, token_mask)


class ExpertLinears(nn.Module):
    """One MoE layer's experts as a gate, an up and a down nn.Linear each (keys `{e}.gate_proj.weight` ...: the
    checkpoints' layout, and transformers 4's), for a Qwen3-MoE that transformers 5 builds with two 3-D tensors.

    bitsandbytes quantises nn.Linear layers only, so QLoRA needs this form to hold the experts (most of the model)
    in 4 bits, and LoRA then reaches each expert as modules. It computes what transformers 5's eager experts do."""

    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, act_fn: nn.Module):
        super().__init__()
        self.num_experts = gate_up.shape[0]
        for index, (gate_up_weights, down_weights) in enumerate(zip(gate_up, down)):
            expert = nn.Module()
            for name, weights in zip(('gate_proj', 'up_proj', 'down_proj'), (*gate_up_weights.chunk(2), down_weights)):
                linear = nn.Linear(weights.shape[1], weights.shape[0], bias=False, device='meta')
                linear.weight = nn.Parameter(weights.clone(), requires_grad=gate_up.requires_grad)
                setattr(expert, name, linear)
            self.add_module(str(index), expert)
        self.act_fn = act_fn

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        return run_experts(hidden_states, top_k_index, top_k_weights, self.num_experts, self._expert)

    def _expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
        expert = getattr(self, str(index))
        return expert.down_proj(self.act_fn(expert.gate_proj(x)) * expert.up_proj(x))


def run_experts(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                num_experts: int, expert: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Each token's (tokens, width) hidden state through its top-k experts (`expert(index, x)`), weighted."""
    out = torch.zeros_like(hidden_states)
    for index in range(num_experts):
        tokens, slot = torch.where(top_k_index == index)
        if tokens.numel() == 0:
            continue
        y = expert(index, hidden_states[tokens])
        out.index_add_(0, tokens, (y * top_k_weights[tokens, slot, None]).to(out.dtype))
    return out


def split_fused_experts(language_model: nn.Module) -> int:
    """Replaces each 3-D Qwen3-MoE experts module by ExpertLinears; the number replaced (0 on transformers 4)."""
    fused = [(name, module) for name, module in language_model.named_modules()
             if name.endswith('mlp.experts') and isinstance(getattr(module, 'gate_up_proj', None), torch.Tensor)]
    for name, module in fused:
        parent, _, child = name.rpartition('.')
        replacement = ExpertLinears(module.gate_up_proj.data, module.down_proj.data, module.act_fn)
        setattr(language_model.get_submodule(parent), child, replacement)
    return len(fused)
