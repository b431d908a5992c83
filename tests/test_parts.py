import pytest
import torch
from helpers import image_batch

from internvl_plugin import InternVL_V1_5
from internvl_plugin.model.checkpoint.export import save_official
from internvl_plugin.files import INTERNVL_SPECIAL_TOKENS
from internvl_plugin.files import load_tokenizer
from internvl_plugin.tiny import build_tiny_parts


@pytest.mark.parametrize('family', ['llama', 'internlm2'])
def test_assemble_from_vision_and_llm_checkpoints(tmp_path, family):
    vision_dir, llm_dir = build_tiny_parts(str(tmp_path / 'parts'), llm=family, vit='6b')
    plain_vocab = len(load_tokenizer(llm_dir))
    model = InternVL_V1_5(vision_model_path=vision_dir, llm_path=llm_dir, template='Hermes-2', ps_version='v1',
                          torch_dtype='float32', freeze_llm=True, freeze_visual_encoder=True,
                          use_activation_checkpointing=False)
    tokenizer = model.tokenizer
    assert len(tokenizer) == plain_vocab + len(INTERNVL_SPECIAL_TOKENS)
    assert all(tokenizer.convert_tokens_to_ids(t) >= plain_vocab for t in INTERNVL_SPECIAL_TOKENS)
    assert model.model.language_model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    assert {n.split('.')[1] for n, p in model.named_parameters() if p.requires_grad} == {'mlp1'}
    batch = image_batch(model)
    model(batch)['loss'].backward()
    assert model.model.mlp1[1].weight.grad.abs().sum() > 0

    out = str(tmp_path / 'assembled')
    save_official(model.model, model.config, tokenizer, out, dtype=torch.float32)
    reloaded = InternVL_V1_5(out, torch_dtype='float32').eval()
    assert reloaded.config['ps_version'] == 'v1' and reloaded.config['template'] == 'Hermes-2'
    model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(batch, mode='predict'), model(batch, mode='predict'), atol=1e-5)


def test_parts_need_both_paths(tmp_path):
    vision_dir, _ = build_tiny_parts(str(tmp_path / 'parts'))
    with pytest.raises(ValueError, match='needs model_path .* or both vision_model_path and llm_path'):
        InternVL_V1_5(vision_model_path=vision_dir)


def test_a_non_vit_folder_is_refused_as_vision_part(tmp_path):
    _, llm_dir = build_tiny_parts(str(tmp_path / 'parts'))
    with pytest.raises(ValueError, match=r"llm/config.json: model_type is 'llama', expected 'intern_vit_6b'"):
        InternVL_V1_5(vision_model_path=llm_dir, llm_path=llm_dir)
