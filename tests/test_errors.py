import os
import shutil

import pytest
from helpers import copy_with_config

from internvl_plugin import InternVL_V1_5
from internvl_plugin.files import resolve_model_path


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model_path '{tmp_path}/nope' does not exist"):
        InternVL_V1_5(str(tmp_path / 'nope'))


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=f'{tmp_path} has no config.json; expected an InternVL checkpoint'):
        InternVL_V1_5(str(tmp_path))


def test_folder_that_is_not_internvl(tiny_checkpoint, tmp_path):
    path = copy_with_config(tiny_checkpoint('qwen2'), tmp_path / 'llm', lambda c: c.update(model_type='qwen2'))
    with pytest.raises(ValueError, match=r"llm/config.json: model_type is 'qwen2', expected 'internvl_chat'"):
        InternVL_V1_5(path)


def test_unsupported_llm_architecture(tiny_checkpoint, tmp_path):
    path = copy_with_config(tiny_checkpoint('qwen2'), tmp_path / 'mistral',
                            lambda c: c['llm_config'].update(architectures=['MistralForCausalLM']))
    with pytest.raises(ValueError, match=r"mistral/config.json: llm_config: architectures \['MistralForCausalLM'\] "
                                         r"is not supported; expected one of \['GptOssForCausalLM', "
                                         r"'InternLM2ForCausalLM'"):
        InternVL_V1_5(path)


@pytest.mark.parametrize('architecture,release', [('Qwen3ForCausalLM', '4.51.0'), ('Qwen3MoeForCausalLM', '4.51.0'),
                                                  ('GptOssForCausalLM', '4.55.0')])
def test_a_family_newer_than_the_installed_transformers_names_the_release_it_needs(monkeypatch, architecture,
                                                                                   release):
    """As on the pinned world's transformers 4.48, which has no Qwen3, Qwen3-MoE or GPT-OSS config."""
    from types import SimpleNamespace
    from internvl_plugin.model.modeling import llm
    from internvl_plugin.model.modeling.llm import build_llm_config
    monkeypatch.setattr(llm, 'transformers', SimpleNamespace(__version__='4.48.0'))
    with pytest.raises(ValueError, match=rf'^ckpt/config.json: llm_config: {architecture} needs transformers >= '
                                         rf'{release} \(installed: 4.48.0\); install a newer world'):
        build_llm_config({'architectures': [architecture], 'hidden_size': 64}, source='ckpt/config.json: llm_config')


def test_invalid_json_names_the_line(tiny_checkpoint, tmp_path):
    path = tmp_path / 'broken'
    shutil.copytree(tiny_checkpoint('qwen2'), path)
    (path / 'config.json').write_text('{\n  "model_type": "internvl_chat",\n  oops\n}')
    with pytest.raises(ValueError, match=r'broken/config.json:3: invalid JSON'):
        InternVL_V1_5(str(path))


def test_weights_that_do_not_fit_the_config(tiny_checkpoint, tmp_path):
    path = copy_with_config(tiny_checkpoint('qwen2'), tmp_path / 'deeper',
                            lambda c: c['vision_config'].update(num_hidden_layers=3))
    with pytest.raises(ValueError, match=r"deeper: missing keys \['encoder.layers.2."):
        InternVL_V1_5(path)


def test_folder_without_weights(tiny_checkpoint, tmp_path):
    path = tmp_path / 'empty'
    shutil.copytree(tiny_checkpoint('qwen2'), path)
    os.remove(path / 'model.safetensors')
    with pytest.raises(FileNotFoundError, match='empty has no weights; expected model.safetensors'):
        InternVL_V1_5(str(path))


def test_hub_id_offline_and_not_cached_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub'))
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    with pytest.raises(FileNotFoundError) as error:
        resolve_model_path('OpenGVLab/InternVL2_5-8B')
    message = str(error.value)
    assert '\n' not in message
    assert message.startswith("model_path 'OpenGVLab/InternVL2_5-8B' is neither a local folder nor in the Hugging "
                              'Face cache, and downloading it failed')


def test_hub_id_resolves_from_the_cache(tiny_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / 'hub'
    repo = cache / 'models--OpenGVLab--InternVL2_5-1B'
    revision = 'a' * 40
    shutil.copytree(tiny_checkpoint('qwen2'), repo / 'snapshots' / revision)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(revision)
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    model = InternVL_V1_5('OpenGVLab/InternVL2_5-1B', torch_dtype='float32')
    assert model.model_path == str(repo / 'snapshots' / revision)
