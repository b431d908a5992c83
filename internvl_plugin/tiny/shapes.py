"""Config-only checkpoints with the shapes of the released InternVL2_5 models (no weights, no download).

Built with `InternVL_V1_5(..., random_init=True)` they give random-initialised networks of the real sizes, which is
what throughput and memory benchmarks need. The tokenizer is the tiny one of the LLM family: token ids stay within the
real vocabulary, which keeps its size.
"""
import os
from typing import Any, Dict

from ..model.checkpoint.export import atomic_output_dir, write_json
from .checkpoint import tiny_internvl_config
from .tokenizer import build_tiny_tokenizer

VIT_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                drop_path_rate=0.1)
VIT_6B = dict(hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
              drop_path_rate=0.1)
INTERNLM2_5 = dict(vocab_size=92553, max_position_embeddings=32768)

# Per size: the released model, its ViT style and LLM family, and the config.json values that differ from the tiny
# ones (llm_config values from the released checkpoints' config.json files).
RELEASED_SHAPES: Dict[str, Dict[str, Any]] = {
    '1b': dict(model='InternVL2_5-1B', vit='300m', llm='qwen2', vision_config=VIT_300M,
               llm_config=dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                               intermediate_size=4864, vocab_size=151674, max_position_embeddings=32768)),
    '2b': dict(model='InternVL2_5-2B', vit='300m', llm='internlm2', vision_config=VIT_300M,
               llm_config=dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
                               intermediate_size=8192, **INTERNLM2_5)),
    '8b': dict(model='InternVL2_5-8B', vit='300m', llm='internlm2', vision_config=VIT_300M,
               llm_config=dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                               intermediate_size=14336, **INTERNLM2_5)),
    '26b': dict(model='InternVL2_5-26B', vit='6b', llm='internlm2', vision_config=VIT_6B,
                llm_config=dict(hidden_size=6144, num_hidden_layers=48, num_attention_heads=48, num_key_value_heads=8,
                                intermediate_size=16384, **INTERNLM2_5)),
    # The tiny test shapes under the same recipe, so the benchmark's real-size path also runs on a CPU.
    'tiny': dict(model='tiny', vit='300m', llm='qwen2', vision_config={}, llm_config={}),
}


def released_config(size: str) -> Dict[str, Any]:
    """The official-format config.json dict of a released size (see RELEASED_SHAPES)."""
    if size not in RELEASED_SHAPES:
        raise ValueError(f"size '{size}' is not one of {sorted(RELEASED_SHAPES)}")
    shape = RELEASED_SHAPES[size]
    config = tiny_internvl_config(shape['llm'], shape['vit'], build_tiny_tokenizer(shape['llm']))
    config['vision_config'].update(shape['vision_config'])
    config['llm_config'].update(shape['llm_config'])
    config['template'] = 'internvl2_5'
    return config


def write_shape_checkpoint(out_dir: str, size: str) -> Dict[str, Any]:
    """Writes config.json and a tokenizer of a released size to `out_dir` (no weights); returns the config."""
    config = released_config(size)
    with atomic_output_dir(out_dir) as tmp:
        write_json(os.path.join(tmp, 'config.json'), config)
        build_tiny_tokenizer(RELEASED_SHAPES[size]['llm']).save_pretrained(tmp)
    return config
