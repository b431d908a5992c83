"""Preference data and model: pairs token-exact to the SFT encoding of each answer, media tiled once, bad lines named
by file:line, packed rows equal to unpacked ones, the reference model in both forms, metrics and state."""
import pytest
import torch
from conftest import needs_cpu_4bit, needs_qwen3
from helpers import qa, save_image, write_jsonl

from internvl_plugin import (InternVL_V1_5, InternVL_V1_5_Dataset, InternVLPreference, PreferenceDataset,
                             preference_collate_fn)
from internvl_plugin.dataset import DataError
from internvl_plugin.model.preference_model import network_sequence_logps

LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0)


def pair(question='<image>\nWhat colour is the square?', chosen='It is red.', rejected='It is blue, I think.', **extra):
    return {'question': question, 'chosen': chosen, 'rejected': rejected, **extra}


def _pairs_file(tmp_path, records):
    save_image(tmp_path / 'a.png', 600, 300, seed=1)
    save_image(tmp_path / 'b.png', 300, 300, seed=2)
    return write_jsonl(tmp_path / 'pairs.jsonl', records)


@pytest.mark.parametrize('family', ['qwen2', 'phi3', 'internlm2'])
def test_each_answer_is_the_sft_encoding_of_the_prompt_and_that_answer(tiny_checkpoint, tmp_path, family):
    records = [pair(image='a.png'), pair(image=['a.png', 'b.png'], question='<image> and <image>: same colour?',
                                         chosen='No.', rejected='Yes, both are grey.'),
               pair(question='Say hi.', chosen='Hi!', rejected='No.')]
    path = _pairs_file(tmp_path, records)
    pairs = PreferenceDataset(model_path=tiny_checkpoint(family), data_paths=path, max_dynamic_patch=2)
    for index, record in enumerate(records):
        item = pairs[index]
        for name in ('chosen', 'rejected'):
            sft_line = qa(record['question'], record[name], **({'image': record['image']} if 'image' in record else {}))
            sft = InternVL_V1_5_Dataset(model_path=tiny_checkpoint(family), max_dynamic_patch=2,
                                        data_paths=write_jsonl(tmp_path / f'sft_{name}.jsonl', [sft_line]))[0]
            prompt = item['prompt_ids']
            assert torch.equal(torch.cat([prompt, item[f'{name}_ids']]), sft['input_ids'])
            assert torch.equal(item[f'{name}_labels'], sft['labels'][len(prompt):])
            assert (sft['labels'][:len(prompt)] == -100).all()
            assert torch.equal(item['pixel_values'], sft['pixel_values'])  # tiled once, as the SFT sample is
        assert len(item['chosen_ids']) and len(item['rejected_ids'])
        assert item['chosen_labels'][0] != -100 or item['chosen_labels'][1] != -100  # the answer starts at once


@pytest.mark.parametrize('line, problem', [
    ({'question': 'Q?', 'rejected': 'b'}, '"chosen" is missing; expected the preferred answer as text'),
    (pair(rejected=3), '"rejected" is 3; expected the worse answer as non-empty text'),
    (pair(question='  '), '"question" is \'  \'; expected the prompt as non-empty text'),
    (pair(chosen='Same.', rejected='Same.'), '"chosen" and "rejected" are the same text'),
    (pair(rejected='<image> here'), '"rejected" holds an <image> or <video> placeholder'),
    (pair(image='a.png', question='<image> <image> two?'), '2 <image> placeholder(s) for 1 image(s)'),
    ('{"question": "Q?", "chosen": "a", ', 'invalid JSON'),
])
def test_a_bad_line_is_named_by_file_and_line(tiny_checkpoint, tmp_path, line, problem):
    path = _pairs_file(tmp_path, [pair(question='Fine?', chosen='Yes.', rejected='No.'), line])
    with pytest.raises(DataError) as error:
        PreferenceDataset(model_path=tiny_checkpoint('qwen2'), data_paths=path)
    assert f'{path}:2: {problem}' in str(error.value)


def test_repeat_factors_and_meta_settings_are_the_sft_datasets(tiny_checkpoint, tmp_path):
    path = _pairs_file(tmp_path, [pair(image='a.png'), pair(question='Q?', chosen='A.', rejected='B.')])
    pairs = PreferenceDataset(model_path=tiny_checkpoint('qwen2'), data_paths=[path], repeat_times=[1.5],
                              max_dynamic_patch=3, use_thumbnail=True)
    assert len(pairs) == 3
    assert len(pairs[0]['pixel_values']) == 3  # 600x300: 2 tiles + the thumbnail
    assert len(pairs.length) == 3 and pairs.length[1] > 0


def _batch(tiny_checkpoint, tmp_path, pack_pairs, family='qwen2'):
    records = [pair(image='a.png'), pair(question='Any colour?', chosen='None at all.', rejected='Red.'),
               pair(image=['a.png', 'b.png'], question='<image><image> differ?', chosen='Yes.', rejected='No.')]
    pairs = PreferenceDataset(model_path=tiny_checkpoint(family), data_paths=_pairs_file(tmp_path, records),
                              max_dynamic_patch=2)
    data = preference_collate_fn([pairs[i] for i in range(len(pairs))], pack_pairs=pack_pairs)['data']
    data['tokens_per_tile'] = pairs.image.tokens_per_tile   # for the test's own counts; the model reads no such key
    data['context_id'] = pairs.encoder.img_context_id
    return data


def test_the_collate_lays_out_pairs_packed_or_as_chosen_then_rejected_rows(tiny_checkpoint, tmp_path):
    packed, unpacked = (_batch(tiny_checkpoint, tmp_path, pack) for pack in (True, False))
    assert packed['input_ids'].shape[0] == 3 and unpacked['input_ids'].shape[0] == 6
    assert packed['segment_ids'].max() == 2 and unpacked['segment_ids'].max() == 1
    assert sorted(packed['sequence_ids'].unique().tolist()) == list(range(-1, 6))
    tiles = packed['pixel_values'].shape[0]
    # 600x300 at 2 tiles: 2 + thumbnail; two images share the budget: 1 tile each. Each pair's media once.
    assert tiles == 3 + 2 and torch.equal(packed['pixel_values'], unpacked['pixel_values'])
    assert packed['tile_order'].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4]
    assert unpacked['tile_order'].tolist() == list(range(5)) * 2
    for data in (packed, unpacked):  # each image span of each row takes its tiles' tokens
        context = int((data['input_ids'] == data['context_id']).sum())
        assert context == data['tokens_per_tile'] * len(data['tile_order'])
    rejected_row = packed['sequence_ids'][0]
    assert (packed['position_ids'][0][rejected_row == 3] == torch.arange(int((rejected_row == 3).sum()))).all()


@pytest.mark.parametrize('attention', ['sdpa', 'eager'])
def test_packed_pairs_give_the_log_probs_of_unpacked_ones(tiny_checkpoint, tmp_path, attention):
    model = InternVLPreference(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', llm_lora=LORA,
                               attn_implementation=attention, freeze_visual_encoder=True, freeze_mlp=True)
    results = []
    for pack_pairs in (True, False):
        data = _batch(tiny_checkpoint, tmp_path, pack_pairs)
        sums, counts, _ = network_sequence_logps(model.model, data)
        results.append((sums, counts))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(results[0][1], results[1][1]) and (results[0][1] > 0).all()


def _perturb_lora(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'lora_B' in name:
                param.add_(torch.randn_like(param) * 0.5)


def test_with_lora_the_reference_is_the_network_with_its_adapters_off(tiny_checkpoint, tmp_path):
    data = _batch(tiny_checkpoint, tmp_path, True)
    model = InternVLPreference(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', llm_lora=LORA,
                               freeze_visual_encoder=True, freeze_mlp=True)
    assert model.reference_mode == 'adapters' and model.reference_model is None
    _perturb_lora(model)
    model.train()
    policy, _, _ = network_sequence_logps(model.model, data)
    reference, _ = model.reference_logps(data)
    base = InternVLPreference(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', reference='copy').eval()
    initial, _, _ = network_sequence_logps(base.model, data)
    torch.testing.assert_close(reference, initial, rtol=1e-5, atol=1e-5)
    assert (policy - reference).abs().max() > 1e-2
    assert model.model.training  # the reference pass leaves training mode as it was


def test_reference_adapters_is_refused_when_more_than_lora_trains(tiny_checkpoint):
    beyond = r"reference='adapters' needs LoRA and nothing else training, but \['mlp1.0.weight'"
    with pytest.raises(ValueError, match=beyond):
        InternVLPreference(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', llm_lora=LORA,
                           freeze_visual_encoder=True, reference='adapters')
    with pytest.raises(ValueError, match='no LoRA is set'):
        InternVLPreference(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', reference='adapters')


def test_full_fine_tuning_keeps_a_frozen_copy_of_the_initial_model(tiny_checkpoint, tmp_path):
    data = _batch(tiny_checkpoint, tmp_path, True)
    model = InternVLPreference(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32',
                               use_activation_checkpointing=False)
    assert model.reference_mode == 'copy'
    before, _ = model.reference_logps(data)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model(data)
    out['loss'].backward()
    optimizer.step()
    model.train()
    after, _ = model.reference_logps(data)
    policy, _, _ = network_sequence_logps(model.model, data)
    torch.testing.assert_close(before, after)
    assert not model.reference_model.training and (policy - after).abs().max() > 1e-3
    assert not any(key.startswith('reference_model.') for key in model.state_dict())


def test_a_step_logs_every_term_and_metric_and_starts_at_log_2(tiny_checkpoint, tmp_path):
    data = _batch(tiny_checkpoint, tmp_path, True)
    model = InternVLPreference(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', llm_lora=LORA,
                               freeze_visual_encoder=True, freeze_mlp=True)
    out = model(data)
    assert set(out) == {'loss', 'term_sigmoid', 'term_bco_pair', 'term_sft', 'reward_shift', 'rewards_chosen',
                        'rewards_rejected', 'rewards_margin', 'rewards_accuracy', 'logps_chosen', 'logps_rejected'}
    assert float(out['term_sigmoid']) == pytest.approx(0.6931472, abs=1e-5)  # policy == reference at the start
    assert float(out['rewards_margin']) == pytest.approx(0.0, abs=1e-6)
    expected = 0.8 * out['term_sigmoid'] + 0.2 * out['term_bco_pair'] + out['term_sft']
    torch.testing.assert_close(out['loss'].detach(), expected)
    loss, log_vars = model.parse_losses(out)  # MMEngine sums the keys that hold 'loss': only the total
    torch.testing.assert_close(loss.detach(), out['loss'].detach())
    assert 'rewards_accuracy' in log_vars and 'term_sft' in log_vars


def test_checkpoints_carry_the_reward_shift_and_pretrained_weights_start_it_afresh(tiny_checkpoint, tmp_path):
    data = _batch(tiny_checkpoint, tmp_path, True)
    settings = dict(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', llm_lora=LORA,
                    freeze_visual_encoder=True, freeze_mlp=True)
    model = InternVLPreference(**settings)
    _perturb_lora(model)
    model(data)
    model(data)
    state = model.state_dict()
    assert float(state['reward_shift.count']) == 2 and float(state['reward_shift.mean']) != 0
    resumed = InternVLPreference(**settings)
    resumed.load_state_dict(state, strict=False)
    assert float(resumed.reward_shift.mean) == float(model.reward_shift.mean)
    torch.save({'state_dict': state}, tmp_path / 'iter_2.pth')
    restarted = InternVLPreference(**settings, pretrained_pth=str(tmp_path / 'iter_2.pth'))
    assert float(restarted.reward_shift.count) == 0
    lora_b = next(key for key in state if 'lora_B' in key)
    assert torch.equal(restarted.state_dict()[lora_b], state[lora_b])
    sft = InternVL_V1_5(**settings)
    torch.save({'state_dict': sft.state_dict()}, tmp_path / 'sft.pth')
    InternVLPreference(**settings, pretrained_pth=str(tmp_path / 'sft.pth'))  # an SFT run's LoRA to start from


@needs_cpu_4bit
def test_qlora_trains_against_its_own_network_with_adapters_off(tiny_checkpoint, tmp_path):
    data = _batch(tiny_checkpoint, tmp_path, True)
    model = InternVLPreference(model_path=tiny_checkpoint('qwen2'), torch_dtype='bfloat16', quantization_llm=True,
                               llm_lora=LORA, freeze_visual_encoder=True, freeze_mlp=True)
    assert model.reference_mode == 'adapters'
    out = model(data)
    out['loss'].backward()
    grads = [p.grad for n, p in model.named_parameters() if 'lora_' in n and p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert float(out['term_sigmoid']) == pytest.approx(0.6931, abs=2e-2)


@needs_cpu_4bit
@pytest.mark.parametrize('family', ['qwen2', pytest.param('qwen3_moe', marks=needs_qwen3)])
def test_qlora_gradients_are_the_same_on_a_cpu_with_avx512_bf16(tiny_checkpoint, tmp_path, monkeypatch, family):
    """There bitsandbytes repacks a 4-bit layer for inference on its first eval pass without gradients (the
    reference pass), which would leave the policy pass outside autograd, and fails on a 4-expert router."""
    import bitsandbytes.nn.modules
    data = _batch(tiny_checkpoint, tmp_path, True, family)
    grads = []
    for avx512_bf16 in (False, True):
        monkeypatch.setattr(bitsandbytes.nn.modules, 'has_avx512bf16', lambda: avx512_bf16)
        torch.manual_seed(0)
        model = InternVLPreference(model_path=tiny_checkpoint(family), torch_dtype='bfloat16', quantization_llm=True,
                                   llm_lora=LORA, freeze_visual_encoder=True, freeze_mlp=True)
        model(data)['loss'].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name
