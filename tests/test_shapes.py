"""Config-only checkpoints of the released sizes, random-initialised into networks of those sizes."""
import pytest
import torch
from conftest import needs_cpu_4bit
from helpers import image_batch

from internvl_plugin import InternVL_V1_5
from internvl_plugin.model.checkpoint.load import build_network, read_internvl_config
from internvl_plugin.tiny import released_config, write_shape_checkpoint

# Parameter counts the released checkpoints' model cards state (to their 3 significant digits).
RELEASED_PARAMETERS = {'1b': 938e6, '2b': 2.21e9, '8b': 8.08e9, '26b': 25.5e9}


@pytest.mark.parametrize('size', sorted(RELEASED_PARAMETERS))
def test_released_shapes_have_the_released_parameter_counts(size):
    with torch.device('meta'):
        network = build_network(released_config(size), None, 0, size)
    count = sum(p.numel() for p in network.parameters())
    assert count == pytest.approx(RELEASED_PARAMETERS[size], rel=0.003)


def test_shape_checkpoint_is_an_official_config_with_a_tokenizer_and_no_weights(tmp_path):
    write_shape_checkpoint(str(tmp_path / '26b'), '26b')
    config = read_internvl_config(str(tmp_path / '26b'))
    assert config['vision_config']['hidden_size'] == 3200 and config['vision_config']['qk_normalization']
    assert config['llm_config']['num_hidden_layers'] == 48 and config['template'] == 'internvl2_5'
    assert not any(p.name.endswith(('.safetensors', '.bin')) for p in (tmp_path / '26b').iterdir())
    assert (tmp_path / '26b' / 'tokenizer.model').is_file()  # InternLM2's SentencePiece model, as released
    with pytest.raises(FileNotFoundError, match='has no weights'):
        InternVL_V1_5(str(tmp_path / '26b'))


def test_random_init_builds_the_configured_shapes(tmp_path):
    write_shape_checkpoint(str(tmp_path / 'tiny'), 'tiny')
    model = InternVL_V1_5(str(tmp_path / 'tiny'), random_init=True, torch_dtype='float32',
                          llm_lora=dict(r=4, lora_alpha=8))
    assert model.model.vision_model.config.hidden_size == released_config('tiny')['vision_config']['hidden_size']
    loss = model(image_batch(model))['loss']
    loss.backward()
    assert torch.isfinite(loss)


def test_random_init_needs_model_path():
    with pytest.raises(ValueError, match="random_init builds the network from model_path's config.json"):
        InternVL_V1_5(vision_model_path='vit', llm_path='llm', random_init=True)


@needs_cpu_4bit
def test_random_init_qlora_is_built_like_a_quantised_checkpoint(tmp_path, tiny_checkpoint):
    """Same 4-bit layers, kept lm_head and peft's bnb LoRA layers as a quantised load of real weights."""
    import bitsandbytes as bnb
    write_shape_checkpoint(str(tmp_path / 'tiny'), 'tiny')
    kwargs = dict(torch_dtype='bfloat16', quantization_llm=True, freeze_visual_encoder=True,
                  llm_lora=dict(r=4, lora_alpha=8))
    built = InternVL_V1_5(str(tmp_path / 'tiny'), random_init=True, **kwargs).to('cpu')
    loaded = InternVL_V1_5(tiny_checkpoint('qwen2'), **kwargs)

    def layer_types(model):
        return {name: type(module) for name, module in model.model.language_model.named_modules()}

    assert layer_types(built) == layer_types(loaded)
    quantized = [m for m in built.model.language_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.bnb_quantized and m.weight.quant_type == 'nf4' for m in quantized)
    assert not isinstance(built.model.language_model.get_output_embeddings(), bnb.nn.Linear4bit)
    loss = built(image_batch(built))['loss']
    loss.backward()
    assert torch.isfinite(loss)
    assert all('lora_' in n or n.startswith('model.mlp1.') for n in built.state_dict())
