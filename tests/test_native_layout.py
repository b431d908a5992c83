"""transformers' native InternVL layout (`model_type: internvl`, the -HF releases) as model_path: the same network as
the official twin, the dataset's template and tiling from its files, and the converter's default layout."""
import json
import os

import pytest
import torch
from conftest import needs_gpt_oss, needs_native_internvl, needs_qwen3
from helpers import image_batch
from safetensors.torch import load_file, save_file
from test_convert import train_and_save, write_config

from internvl_plugin import InternVL_V1_5, InternVL_V1_5_Dataset
from internvl_plugin.model.checkpoint.convert import convert_checkpoint
from internvl_plugin.tiny import build_tiny_checkpoint


@pytest.fixture(scope='module')
def twins(tmp_path_factory):
    """twins(llm, vit) -> (official folder, native folder) of the same tiny weights."""
    cache = {}

    def get(llm: str = 'qwen2', vit: str = '300m'):
        if (llm, vit) not in cache:
            folder = tmp_path_factory.mktemp(f'{llm}-{vit}')
            official, native = str(folder / 'official'), str(folder / 'native')
            build_tiny_checkpoint(official, llm=llm, vit=vit, seed=3)
            build_tiny_checkpoint(native, llm=llm, vit=vit, seed=3, layout='hf')
            cache[llm, vit] = official, native
        return cache[llm, vit]

    return get


def logits(folder, batch=None):
    model = InternVL_V1_5(folder, torch_dtype='float32', use_activation_checkpointing=False).eval()
    batch = batch or image_batch(model)
    with torch.no_grad():
        return model, batch, model(batch, mode='predict')


def rewrite(folder, config_change=None, weights_change=None):
    if config_change:
        path = os.path.join(folder, 'config.json')
        config = json.load(open(path))
        config_change(config)
        json.dump(config, open(path, 'w'))
    if weights_change:
        path = os.path.join(folder, 'model.safetensors')
        save_file(weights_change(load_file(path)), path)


@pytest.mark.parametrize('llm,vit', [('qwen2', '300m'), ('qwen2', '6b'), ('internlm2', '300m'),
                                     pytest.param('qwen3', '300m', marks=needs_qwen3),
                                     pytest.param('qwen3_moe', '300m', marks=needs_qwen3),
                                     pytest.param('gpt_oss', '300m', marks=needs_gpt_oss)])
def test_a_native_folder_is_the_network_of_its_official_twin(twins, llm, vit):
    official, native = twins(llm, vit)
    official_model, batch, expected = logits(official)
    native_model, _, found = logits(native, batch)
    assert (official_model.layout, native_model.layout) == ('official', 'hf')
    assert torch.allclose(found, expected, atol=1e-5)
    template = 'internvl3_5_gpt_oss' if llm == 'gpt_oss' else 'internvl2_5'
    assert native_model.config['template'] == template and native_model.config['max_dynamic_patch'] == 12


def test_the_prefixes_of_checkpoints_saved_before_transformers_4_52_load_too(twins, tmp_path):
    official, native = twins()
    legacy = tmp_path / 'legacy'
    build_tiny_checkpoint(str(legacy), seed=3, layout='hf')
    old = {'model.language_model.': 'language_model.model.', 'lm_head.': 'language_model.lm_head.',
           'model.vision_tower.': 'vision_tower.', 'model.multi_modal_projector.': 'multi_modal_projector.'}
    rewrite(legacy, weights_change=lambda weights: {
        next((new + k[len(p):] for p, new in old.items() if k.startswith(p)), k): v for k, v in weights.items()})
    assert all(not key.startswith('model.') for key in load_file(legacy / 'model.safetensors'))
    _, batch, expected = logits(official)
    assert torch.allclose(logits(str(legacy), batch)[2], expected, atol=1e-5)


def test_a_tied_text_config_without_an_output_layer_gets_the_embeddings_as_its_own(tmp_path):
    folder = tmp_path / 'tied'
    build_tiny_checkpoint(str(folder), layout='hf')
    rewrite(folder, config_change=lambda c: c['text_config'].update(tie_word_embeddings=True),
            weights_change=lambda weights: {k: v for k, v in weights.items() if k != 'lm_head.weight'})
    model = InternVL_V1_5(str(folder), torch_dtype='float32')
    language = model.model.language_model
    assert torch.equal(language.get_output_embeddings().weight, language.get_input_embeddings().weight)
    assert language.get_output_embeddings().weight.data_ptr() != language.get_input_embeddings().weight.data_ptr()


def test_keys_that_fit_no_part_and_unknown_text_models_are_named(tmp_path):
    folder = tmp_path / 'stray'
    build_tiny_checkpoint(str(folder), layout='hf')
    rewrite(folder, weights_change=lambda weights: {**weights, 'model.vision_tower.pooler.weight': torch.zeros(2)})
    with pytest.raises(ValueError, match=rf"^{folder}: keys \['model.vision_tower.pooler.weight'\] \(1 in all\) fit "
                                         r'no part of the native InternVL layout'):
        InternVL_V1_5(str(folder))
    rewrite(folder, config_change=lambda c: c['text_config'].update(model_type='mistral'))
    with pytest.raises(ValueError, match=r"config.json: text_config.model_type 'mistral' is not supported; expected "
                                         r"one of \['gpt_oss', 'llama', 'phi3', 'qwen2', 'qwen3', 'qwen3_moe'\]"):
        InternVL_V1_5(str(folder))


def test_the_dataset_tiles_as_the_native_image_processor_says_or_as_released_without_one(twins, tmp_path):
    folder = tmp_path / 'native'
    build_tiny_checkpoint(str(folder), layout='hf')
    processor = folder / 'preprocessor_config.json'
    settings = json.load(open(processor))
    json.dump({**settings, 'max_patches': 4, 'min_patches': 2}, open(processor, 'w'))
    data = tmp_path / 'a.jsonl'
    data.write_text(json.dumps({'conversations': [{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Yo'}]}))
    dataset = InternVL_V1_5_Dataset(model_path=str(folder), data_paths=[str(data)])
    assert (dataset.template_name, dataset.image.min_dynamic_patch, dataset.image.max_dynamic_patch) == \
        ('internvl2_5', 2, 4)
    os.remove(processor)
    dataset = InternVL_V1_5_Dataset(model_path=str(folder), data_paths=[str(data)])
    assert (dataset.image.min_dynamic_patch, dataset.image.max_dynamic_patch, dataset.image.use_thumbnail) == \
        (1, 12, True)


@needs_native_internvl
def test_the_converter_writes_the_layout_the_base_came_in_unless_told(twins, tmp_path):
    from transformers import AutoModelForImageTextToText
    _, native = twins()
    model = InternVL_V1_5(native, torch_dtype='float32', use_activation_checkpointing=False, freeze_llm=True,
                          freeze_visual_encoder=True)
    batch, ckpt = train_and_save(model, str(tmp_path))
    model.eval()
    with torch.no_grad():
        trained = model(batch, mode='predict')
    config = write_config(str(tmp_path), native, freeze_llm=True, freeze_visual_encoder=True)
    summary = convert_checkpoint(config, ckpt, str(tmp_path / 'same'), dtype=torch.float32)
    assert summary['format'] == 'hf'
    assert json.load(open(tmp_path / 'same' / 'config.json'))['model_type'] == 'internvl'
    again = AutoModelForImageTextToText.from_pretrained(str(tmp_path / 'same'), dtype=torch.float32).eval()
    with torch.no_grad():
        native_logits = again(input_ids=batch['input_ids'], pixel_values=batch['pixel_values']).logits
    assert torch.allclose(native_logits, trained, atol=1e-4)
    convert_checkpoint(config, ckpt, str(tmp_path / 'official'), fmt='official', dtype=torch.float32)
    assert json.load(open(tmp_path / 'official' / 'config.json'))['model_type'] == 'internvl_chat'
    assert torch.allclose(logits(str(tmp_path / 'official'), batch)[2], trained, atol=1e-4)
