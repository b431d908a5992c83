"""Config-only checkpoints with the shapes of released models (no weights, no download).

Built with `InternVL_V1_5(..., random_init=True)` they give random-initialised networks of the real sizes, which is
what throughput and memory benchmarks need. The tokenizer is the tiny one of the LLM family: token ids stay within the
real vocabulary, which keeps its size.
"""
import os
from typing import Any, Dict

from ..model.checkpoint.export import atomic_output_dir, write_json
from ..released import RELEASED, ReleasedShape
from .checkpoint import tiny_internvl_config
from .tokenizer import build_tiny_tokenizer

# The InternVL2_5 sizes of benchmarks/train_step.py --size: the released model and its shapes.
RELEASED_SHAPES: Dict[str, Dict[str, Any]] = {
    size: dict(model=f'InternVL2_5-{size.upper()}', shape=RELEASED[f'OpenGVLab/InternVL2_5-{size.upper()}'])
    for size in ('1b', '2b', '8b', '26b')
}
# The tiny test shapes under the same recipe, so the benchmark's real-size path also runs on a CPU.
RELEASED_SHAPES['tiny'] = dict(model='tiny', shape=ReleasedShape('qwen2', '300m', {}, {}))


def shape_config(shape: ReleasedShape) -> Dict[str, Any]:
    """The official-format config.json dict of a model of these shapes."""
    config = tiny_internvl_config(shape.llm, shape.vit, build_tiny_tokenizer(shape.llm))
    config['vision_config'].update(shape.vision_config)
    config['llm_config'].update(shape.llm_config)
    config['template'] = 'internvl2_5'
    return config


def released_config(size: str) -> Dict[str, Any]:
    """The official-format config.json dict of a released size (see RELEASED_SHAPES)."""
    if size not in RELEASED_SHAPES:
        raise ValueError(f"size '{size}' is not one of {sorted(RELEASED_SHAPES)}")
    return shape_config(RELEASED_SHAPES[size]['shape'])


def write_config_checkpoint(out_dir: str, config: Dict[str, Any], llm_family: str) -> None:
    """Writes `config` as config.json and the family's tiny tokenizer to `out_dir` (no weights)."""
    with atomic_output_dir(out_dir) as tmp:
        write_json(os.path.join(tmp, 'config.json'), config)
        build_tiny_tokenizer(llm_family).save_pretrained(tmp)


def write_shape_checkpoint(out_dir: str, size: str) -> Dict[str, Any]:
    """Writes config.json and a tokenizer of a released size to `out_dir` (no weights); returns the config."""
    config = released_config(size)
    write_config_checkpoint(out_dir, config, RELEASED_SHAPES[size]['shape'].llm)
    return config
