"""LoRA settings: the official per-family target modules, and LoRA configs given as objects or config dicts."""
from typing import Any, Dict, List, Optional, Union

from peft import LoraConfig

# Official InternVL LoRA targets, in this plugin's module names (InternLM2 runs as Llama: wqkv -> q/k/v_proj,
# wo -> o_proj, w1/w3/w2 -> gate/up/down_proj). Never the output head or the embeddings.
_LLAMA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
LLM_LORA_TARGETS: Dict[str, List[str]] = {
    'qwen2': _LLAMA_TARGETS,
    'qwen3': _LLAMA_TARGETS,
    'llama': _LLAMA_TARGETS,
    'internlm2': _LLAMA_TARGETS,
    'phi3': ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'],
}
VISION_LORA_TARGETS = ['attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2']
# InternLM2 module names users know from the official scripts -> the Llama modules they became.
INTERNLM2_MODULE_NAMES = {'wqkv': ['q_proj', 'k_proj', 'v_proj'], 'wo': ['o_proj'], 'w1': ['gate_proj'],
                          'w3': ['up_proj'], 'w2': ['down_proj']}


def build_lora_config(lora: Union[LoraConfig, Dict[str, Any]], default_targets: List[str],
                      family: Optional[str] = None) -> LoraConfig:
    """A LoraConfig from an object or a config dict (`type` optional); fills in the official targets."""
    if isinstance(lora, LoraConfig):
        config = lora
    else:
        fields = dict(lora)
        fields.pop('type', None)
        config = LoraConfig(**fields)
    targets = config.target_modules
    if not targets:
        config.target_modules = list(default_targets)
    elif family == 'internlm2' and not isinstance(targets, str):
        config.target_modules = sorted({m for t in targets for m in INTERNLM2_MODULE_NAMES.get(t, [t])})
    return config
