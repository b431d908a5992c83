"""LoRA settings: the official per-family target modules, and LoRA configs given as objects or config dicts."""
from typing import Any, Dict, List, Optional, Union

from peft import LoraConfig, get_peft_model
from torch import nn

from .modeling.moe import ExpertLinears

# Official InternVL LoRA targets, in this plugin's module names (InternLM2 runs as Llama: wqkv -> q/k/v_proj,
# wo -> o_proj, w1/w3/w2 -> gate/up/down_proj). Never the output head, the embeddings or an MoE router.
_ATTENTION_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj']
_LLAMA_TARGETS = _ATTENTION_TARGETS + ['gate_proj', 'up_proj', 'down_proj']
LLM_LORA_TARGETS: Dict[str, List[str]] = {
    'qwen2': _LLAMA_TARGETS,
    'qwen3': _LLAMA_TARGETS,
    'qwen3_moe': _LLAMA_TARGETS,  # on transformers 4 each expert is an MLP of these modules
    'gpt_oss': _ATTENTION_TARGETS,  # its experts are parameters (below)
    'llama': _LLAMA_TARGETS,
    'internlm2': _LLAMA_TARGETS,
    'phi3': ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'],
}
# MoE experts held as 3-D parameters (GPT-OSS; Qwen3-MoE from transformers 5 on) take LoRA through peft's
# `target_parameters`, in place of the per-expert MLP modules (which peft would map to them again, with rank and
# alpha patterns that match nothing and a warning each run).
EXPERT_PARAMETERS = ['mlp.experts.gate_up_proj', 'mlp.experts.down_proj']
EXPERT_MODULES = ('gate_proj', 'up_proj', 'down_proj')
VISION_LORA_TARGETS = ['attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2']
# InternLM2 module names users know from the official scripts -> the Llama modules they became.
INTERNLM2_MODULE_NAMES = {'wqkv': ['q_proj', 'k_proj', 'v_proj'], 'wo': ['o_proj'], 'w1': ['gate_proj'],
                          'w3': ['up_proj'], 'w2': ['down_proj']}


def expert_parameters(model: nn.Module) -> List[str]:
    """EXPERT_PARAMETERS when `model` holds its experts as parameters, else none."""
    names = {name.rsplit('.', 1)[-1] for name, _ in model.named_parameters() if '.experts.' in name}
    return list(EXPERT_PARAMETERS) if 'gate_up_proj' in names else []


def build_lora_config(lora: Union[LoraConfig, Dict[str, Any]], default_targets: List[str],
                      family: Optional[str] = None, default_parameters: Optional[List[str]] = None) -> LoraConfig:
    """A LoraConfig from an object or a config dict (`type` optional); fills in the official targets (and the
    expert parameters of an MoE LLM when neither targets nor parameters are given)."""
    if isinstance(lora, LoraConfig):
        config = lora
    else:
        fields = dict(lora)
        fields.pop('type', None)
        config = LoraConfig(**fields)
    targets = config.target_modules
    if not targets:
        config.target_modules = list(default_targets)
        if default_parameters and not config.target_parameters:
            config.target_parameters = list(default_parameters)
            config.target_modules = [t for t in default_targets if t not in EXPERT_MODULES]
    elif family == 'internlm2' and not isinstance(targets, str):
        config.target_modules = sorted({m for t in targets for m in INTERNLM2_MODULE_NAMES.get(t, [t])})
    if config.target_parameters and config.lora_dropout:
        raise ValueError(f'llm_lora: lora_dropout is {config.lora_dropout}, but LoRA on the expert parameters '
                         f'{list(config.target_parameters)} (peft target_parameters) takes no dropout; set '
                         'lora_dropout=0.0 (the MoE configs do)')
    return config


def lora_language_model(language_model: nn.Module, lora: LoraConfig) -> nn.Module:
    """peft's LoRA model of the LLM. On transformers 5 peft rewrites a Qwen3-MoE's gate / up / down_proj targets to
    its 3-D expert tensors, for adapters made on transformers 4; experts held as nn.Linear layers (ExpertLinears,
    transformers 4's form) are targeted as they are, so peft sees the dense family's model type meanwhile."""
    if not any(isinstance(module, ExpertLinears) for module in language_model.modules()):
        return get_peft_model(language_model, lora)
    config = language_model.config
    config.model_type = 'qwen3'  # shadows the class attribute 'qwen3_moe' until deleted
    try:
        return get_peft_model(language_model, lora)
    finally:
        del config.model_type
