import pytest
import torch
from conftest import FAMILIES, needs_cpu_4bit
from helpers import image_batch

from internvl_plugin import InternVL_V1_5
from internvl_plugin.model.modeling.internvl_chat import IMAGENET_MEAN, IMAGENET_STD, pixel_shuffle


def trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('vit', ['300m', '6b'])
def test_load_forward_backward(tiny_checkpoint, family, vit):
    model = InternVL_V1_5(tiny_checkpoint(family, vit), torch_dtype='float32')
    batch = image_batch(model)
    loss = model(batch)['loss']
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith('model.vision_model.encoder.layers.0.') and g.abs().sum() > 0 for n, g in grads.items())
    assert any(n.startswith('model.mlp1.') and g.abs().sum() > 0 for n, g in grads.items())
    assert any(n.startswith('model.language_model.model.layers.1.') and g.abs().sum() > 0 for n, g in grads.items())
    logits = model(batch, mode='predict')
    assert logits.shape == (1, batch['input_ids'].shape[1], model.model.language_model.config.vocab_size)


@pytest.mark.parametrize('lora', [False, True], ids=['full', 'lora'])
def test_loss_is_the_cross_entropy_of_full_logits_with_logits_made_only_where_supervised(tiny_checkpoint, lora):
    extra = {'llm_lora': dict(r=4, lora_alpha=8, lora_dropout=0.0)} if lora else {}
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32', **extra)
    batch = image_batch(model)
    rows = []
    model.model.language_model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: rows.append(tuple(args[0].shape[:-1])))
    loss = model(batch)['loss']
    supervised = int((batch['labels'][:, 1:] != -100).sum())
    assert rows == [(supervised,)] and 0 < supervised < batch['input_ids'].shape[1] / 10
    logits = model(batch, mode='predict')
    reference = torch.nn.functional.cross_entropy(logits[0, :-1], batch['labels'][0, 1:], ignore_index=-100)
    assert torch.allclose(loss, reference, rtol=1e-5)


def test_chunked_loss_equals_the_whole_one_and_remakes_each_chunk_in_backward(tiny_checkpoint, monkeypatch):
    from internvl_plugin.model.modeling import segments
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32', loss_reduction='square')
    batch = image_batch(model, answer='a red circle on a white square, left of a small blue triangle')
    supervised = int((batch['labels'][:, 1:] != -100).sum())
    calls = []
    model.model.language_model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: calls.append(args[0].shape[0]))

    def loss_and_grads():
        model.zero_grad()
        loss = model(batch)['loss']
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole_loss, whole_grads = loss_and_grads()
    assert calls == [supervised] and supervised > 6
    monkeypatch.setattr(segments, 'LOSS_CHUNK_ROWS', 3)
    calls.clear()
    chunked_loss, chunked_grads = loss_and_grads()
    chunks = [min(3, supervised - start) for start in range(0, supervised, 3)]
    assert calls[:len(chunks)] == chunks and sorted(calls[len(chunks):]) == sorted(chunks)  # again in backward
    assert torch.allclose(chunked_loss, whole_loss, rtol=1e-6)
    assert chunked_grads.keys() == whole_grads.keys()
    for name, grad in whole_grads.items():
        assert torch.allclose(chunked_grads[name], grad, rtol=1e-5, atol=1e-7), name


def test_vision_styles_have_their_official_modules(tiny_checkpoint):
    vit_6b = InternVL_V1_5(tiny_checkpoint('internlm2', '6b'), torch_dtype='float32').model.vision_model
    vit_300m = InternVL_V1_5(tiny_checkpoint('internlm2', '300m'), torch_dtype='float32').model.vision_model
    layer_6b, layer_300m = vit_6b.encoder.layers[0], vit_300m.encoder.layers[0]
    assert type(layer_6b.norm1).__name__ == 'InternRMSNorm' and hasattr(layer_6b.attn, 'q_norm')
    assert layer_6b.attn.qkv.bias is None
    assert isinstance(layer_300m.norm1, torch.nn.LayerNorm) and not hasattr(layer_300m.attn, 'q_norm')
    assert layer_300m.attn.qkv.bias is not None
    assert torch.allclose(layer_6b.ls1, torch.full_like(layer_6b.ls1, 0.1))


def test_freeze_flags_select_trainable_parameters(tiny_checkpoint):
    path = tiny_checkpoint('qwen2')
    everything = trainable(InternVL_V1_5(path, torch_dtype='float32'))
    assert {n.split('.')[1] for n in everything} == {'vision_model', 'mlp1', 'language_model'}
    only_mlp = trainable(InternVL_V1_5(path, torch_dtype='float32', freeze_llm=True, freeze_visual_encoder=True))
    assert only_mlp == {n for n in everything if n.startswith('model.mlp1.')} and only_mlp
    no_mlp_model = InternVL_V1_5(path, torch_dtype='float32', freeze_mlp=True)
    no_mlp = trainable(no_mlp_model)
    assert no_mlp == {n for n in everything if not n.startswith('model.mlp1.')}
    assert set(no_mlp_model.state_dict()) == no_mlp  # state_dict() holds exactly what trains


def test_pretrained_pth_continues_from_trained_weights(tiny_checkpoint, tmp_path):
    path = tiny_checkpoint('qwen2')
    model = InternVL_V1_5(path, torch_dtype='float32', freeze_visual_encoder=True, llm_lora=dict(r=4, lora_alpha=8))
    for param in model.parameters():
        if param.requires_grad:
            param.data.add_(0.01)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'iter_1.pth')
    resumed = InternVL_V1_5(path, torch_dtype='float32', freeze_visual_encoder=True, llm_lora=dict(r=4, lora_alpha=8),
                            pretrained_pth=str(tmp_path / 'iter_1.pth'))
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r'iter_1.pth: the checkpoint holds LoRA adapters, but the config trains '
                                         r'without LoRA: a LoRA run and a full fine-tune were mixed up'):
        InternVL_V1_5(path, torch_dtype='float32', pretrained_pth=str(tmp_path / 'iter_1.pth'))


def test_drop_path_is_random_in_training_only(tiny_checkpoint):
    model = InternVL_V1_5(tiny_checkpoint('qwen2', '6b'), torch_dtype='float32', drop_path_rate=0.5)
    vision = model.model.vision_model
    assert vision.encoder.layers[-1].drop_path1.rate == pytest.approx(0.5)
    assert vision.encoder.layers[0].drop_path1.rate == 0.0  # linearly rising with depth, as in the official encoder
    tiles = torch.randn(8, 3, 448, 448)  # 16 branch draws: equal masks for two seeds have probability 2^-16
    vision.eval()
    assert torch.equal(vision(tiles), vision(tiles))
    vision.train()
    torch.manual_seed(1)
    first = vision(tiles)
    torch.manual_seed(2)
    assert not torch.equal(first, vision(tiles))


@pytest.mark.parametrize('family,targets', [
    ('qwen2', {'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'}),
    ('internlm2', {'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'}),
    ('phi3', {'qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'}),
    ('llama', {'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'}),
])
def test_llm_lora_uses_official_targets_and_state_dict_holds_what_trains(tiny_checkpoint, family, targets):
    model = InternVL_V1_5(tiny_checkpoint(family), torch_dtype='float32', freeze_visual_encoder=True,
                          llm_lora=dict(r=16, lora_alpha=32, lora_dropout=0.05))
    names = trainable(model)
    lora = {n for n in names if 'lora_' in n}
    assert {n.split('.lora_')[0].rsplit('.', 1)[1] for n in lora} == targets
    assert names - lora == {n for n in names if n.startswith('model.mlp1.')}
    assert not any('lm_head' in n or 'embed' in n for n in lora)
    assert set(model.state_dict()) == names
    full_size = sum(p.numel() for p in model.parameters())
    assert sum(t.numel() for t in model.state_dict().values()) < full_size / 3


def test_internlm2_official_lora_names_are_translated(tiny_checkpoint):
    model = InternVL_V1_5(tiny_checkpoint('internlm2'), torch_dtype='float32',
                          llm_lora=dict(r=4, lora_alpha=8, target_modules=['wqkv', 'wo']))
    modules = {n.split('.lora_')[0].rsplit('.', 1)[1] for n in trainable(model) if 'lora_' in n}
    assert modules == {'q_proj', 'k_proj', 'v_proj', 'o_proj'}


def test_vision_lora_targets(tiny_checkpoint):
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32', freeze_llm=True,
                          visual_encoder_lora=dict(r=4, lora_alpha=8))
    lora = {n for n in trainable(model) if 'lora_' in n}
    assert {n.split('.lora_')[0].split('layers.0.')[-1] for n in lora if 'layers.0.' in n} == \
        {'attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2'}
    model(image_batch(model))['loss'].backward()


@needs_cpu_4bit
@pytest.mark.parametrize('family', ['qwen2', 'internlm2'])
def test_qlora_quantises_only_the_llm_body(tiny_checkpoint, family):
    import bitsandbytes as bnb
    model = InternVL_V1_5(tiny_checkpoint(family), torch_dtype='bfloat16', quantization_llm=True,
                          freeze_visual_encoder=True, llm_lora=dict(r=8, lora_alpha=16))
    llm = model.model.language_model
    quantized = [n for n, m in llm.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all('layers.' in n for n in quantized)
    weight = next(m for m in llm.modules() if isinstance(m, bnb.nn.Linear4bit)).weight
    assert weight.quant_type == 'nf4' and weight.compress_statistics  # nf4 + double quantisation
    assert next(m for m in llm.modules() if isinstance(m, bnb.nn.Linear4bit)).compute_dtype == torch.bfloat16
    assert not isinstance(llm.get_output_embeddings(), bnb.nn.Linear4bit)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.vision_model.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.mlp1.modules())
    loss = model(image_batch(model))['loss']
    loss.backward()
    assert torch.isfinite(loss)
    assert set(model.state_dict()) == trainable(model)
    assert all('lora_' in n or n.startswith('model.mlp1.') for n in model.state_dict())


@needs_cpu_4bit
def test_qlora_can_quantise_the_vision_model_too(tiny_checkpoint):
    import bitsandbytes as bnb
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='bfloat16', quantization_llm=True,
                          quantization_vit=True, llm_lora=dict(r=8, lora_alpha=16))
    model.to('cpu')
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.vision_model.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.model.mlp1.modules())
    model(image_batch(model))['loss'].backward()


def test_pixel_shuffle_v2_moves_2x2_blocks_into_channels():
    grid = torch.arange(16.0).reshape(1, 4, 4, 1)  # value = 4 * row + col
    out = pixel_shuffle(grid, 0.5, 'v2')
    assert out.shape == (1, 2, 2, 4)
    # Following the official view/permute steps by hand: out[i, j, m] = grid[2i + m // 2, 2j + m % 2],
    # i.e. each output cell holds its 2x2 block in row-major order.
    assert out[0, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert out[0, 0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]
    assert out[0, 1, 0].tolist() == [8.0, 9.0, 12.0, 13.0]
    v1 = pixel_shuffle(grid, 0.5, 'v1')
    assert torch.equal(v1, out.transpose(1, 2))


def test_context_token_count_mismatch_names_both_counts(tiny_checkpoint):
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32')
    batch = image_batch(model, tiles=2)
    batch['pixel_values'] = batch['pixel_values'][:1]
    batch['image_flags'] = batch['image_flags'][:1]
    with pytest.raises(ValueError, match=r'512 <IMG_CONTEXT> tokens but its 1 real tiles give 256 visual tokens'):
        model(batch)


def test_dummy_tiles_are_ignored_and_uint8_tiles_are_normalised(tiny_checkpoint):
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32')
    batch = image_batch(model)
    raw = torch.randint(0, 256, (1, 3, 448, 448), dtype=torch.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    batch['pixel_values'] = (raw.float() / 255 - mean) / std
    reference = model(batch, mode='predict')
    batch['pixel_values'] = raw
    assert torch.allclose(model(batch, mode='predict'), reference, atol=1e-5)
    # One more tile flagged 0 (the dummy tile of a text-only sample) changes nothing.
    batch['pixel_values'] = torch.cat([raw, torch.zeros_like(raw)])
    batch['image_flags'] = torch.tensor([1, 0])
    assert torch.allclose(model(batch, mode='predict'), reference, atol=1e-5)


def test_generate_returns_new_tokens(tiny_checkpoint):
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32')
    batch = image_batch(model)
    out = model.model.generate(batch['input_ids'], batch['pixel_values'], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 5)


def test_mmengine_init_weights_keeps_loaded_weights(tiny_checkpoint):
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize('sharded', [False, True])
def test_pytorch_bin_checkpoints_load_like_safetensors(tiny_checkpoint, tmp_path, sharded):
    import json
    import os
    import shutil

    from internvl_plugin.model.checkpoint.load import load_weights
    base = tiny_checkpoint('internlm2')
    folder = tmp_path / 'bin'
    shutil.copytree(base, folder)
    weights = load_weights(str(folder))
    os.remove(folder / 'model.safetensors')
    if sharded:
        keys = sorted(weights)
        halves = {'pytorch_model-00001-of-00002.bin': keys[::2], 'pytorch_model-00002-of-00002.bin': keys[1::2]}
        for name, part in halves.items():
            torch.save({k: weights[k] for k in part}, folder / name)
        index = {'weight_map': {k: name for name, part in halves.items() for k in part}}
        (folder / 'pytorch_model.bin.index.json').write_text(json.dumps(index))
    else:
        torch.save(weights, folder / 'pytorch_model.bin')
    from_bin = InternVL_V1_5(str(folder), torch_dtype='float32').eval()
    from_safetensors = InternVL_V1_5(base, torch_dtype='float32').eval()
    batch = image_batch(from_bin)
    with torch.no_grad():
        assert torch.equal(from_bin(batch, mode='predict'), from_safetensors(batch, mode='predict'))


def test_select_layer_indexes_hidden_states_like_the_official_model(tiny_checkpoint):
    vision = InternVL_V1_5(tiny_checkpoint('qwen2', '6b'), torch_dtype='float32').model.vision_model.eval()
    tiles = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        embeddings = vision.embeddings(tiles)
        after_first = vision.encoder.layers[0](embeddings)
        after_last = vision.encoder.layers[1](after_first)
        assert torch.equal(vision(tiles, select_layer=0), embeddings)      # hidden_states[0]: the embeddings
        assert torch.equal(vision(tiles, select_layer=-2), after_first)    # hidden_states[-2]: one layer before the end
        assert torch.equal(vision(tiles, select_layer=-1), after_last)
    with pytest.raises(ValueError, match='select_layer -4 is out of range for a 2-layer vision model'):
        vision(tiles, select_layer=-4)


def test_an_llm_config_asking_for_tied_embeddings_keeps_the_checkpoints_lm_head(tiny_checkpoint, tmp_path):
    """The official code unties the output layer whatever llm_config says; the checkpoint's lm_head is trained."""
    import json
    import shutil

    from safetensors.torch import load_file
    folder = tmp_path / 'tied'
    shutil.copytree(tiny_checkpoint('qwen2'), folder)
    config = json.loads((folder / 'config.json').read_text())
    config['llm_config']['tie_word_embeddings'] = True
    (folder / 'config.json').write_text(json.dumps(config))
    saved = load_file(str(folder / 'model.safetensors'))
    model = InternVL_V1_5(str(folder), torch_dtype='float32')
    llm = model.model.language_model
    assert torch.equal(llm.get_output_embeddings().weight, saved['language_model.lm_head.weight'])
    assert not torch.equal(saved['language_model.lm_head.weight'], saved['language_model.model.embed_tokens.weight'])
    assert llm.get_output_embeddings().weight.data_ptr() != llm.get_input_embeddings().weight.data_ptr()


def test_phi3_long_context_rope_of_the_released_4b_models_builds(tiny_checkpoint):
    """InternVL2-4B's llm_config names Phi-3's long rope 'su' with per-frequency factors."""
    import json
    import os
    folder = tiny_checkpoint('phi3')
    with open(os.path.join(folder, 'config.json')) as f:
        rope = json.load(f)['llm_config']['rope_scaling']
    assert rope['type'] == 'su' and set(rope) == {'type', 'short_factor', 'long_factor'}
    model = InternVL_V1_5(folder, torch_dtype='float32')
    built = model.model.language_model.config
    scaling = getattr(built, 'rope_parameters', None) or built.rope_scaling
    assert scaling.get('rope_type', scaling.get('type')) == 'longrope'
    assert list(scaling['long_factor']) == rope['long_factor']
    assert model(image_batch(model))['loss'].isfinite()
