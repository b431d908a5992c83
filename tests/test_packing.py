import logging
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_cpu_4bit, needs_gpt_oss, needs_qwen3
from mmengine.config import Config
from mmengine.config.lazy import LazyObject
from torch.nn.attention import SDPBackend, sdpa_kernel
from helpers import qa, save_image, write_jsonl
from test_configs import CONFIG_DIR, _build_and_step
from xtuner.dataset.samplers import LengthGroupedSampler

from internvl_plugin import InternVL_V1_5, InternVL_V1_5_Dataset, PackedDataset, internvl_collate_fn
from internvl_plugin.dataset.packing import plan_packs
from internvl_plugin.model.modeling.segments import block_causal_mask, per_sample_attention, token_weights
from internvl_plugin.tiny import write_mixed_workload


def test_plan_puts_every_sample_in_one_pack_within_both_budgets():
    rng = random.Random(0)
    tokens = [rng.randint(50, 4000) for _ in range(2000)]
    tiles = [rng.choice([0, 0, 1, 3, 7, 13]) for _ in range(2000)]
    packs = plan_packs(tokens, tiles, max_tokens=8192, max_tiles=48)
    assert sorted(i for pack in packs for i in pack) == list(range(2000))
    assert all(sum(tokens[i] for i in pack) <= 8192 and sum(tiles[i] for i in pack) <= 48 for pack in packs)
    fill = sum(tokens) / (len(packs) * 8192)
    assert fill > 0.97, fill  # best-fit decreasing leaves packs nearly full


def _best_fit_by_scanning(tokens, tiles, max_tokens, max_tiles):
    """The rule spelled out: longest first, into the open pack with the fewest free tokens that has room (ties: the
    least tile room, then the oldest pack)."""
    packs, free, room = [], [], []
    for index in sorted(range(len(tokens)), key=lambda i: -tokens[i]):
        fitting = [p for p in range(len(packs)) if free[p] >= tokens[index] and room[p] >= tiles[index]]
        if not fitting:
            packs.append([index])
            free.append(max_tokens - tokens[index])
            room.append(max_tiles - tiles[index])
            continue
        best = min(fitting, key=lambda p: (free[p], room[p], p))
        packs[best].append(index)
        free[best] -= tokens[index]
        room[best] -= tiles[index]
    return packs


def test_the_tree_planner_makes_the_packs_a_full_scan_makes_when_the_tile_budget_binds():
    rng = random.Random(1)
    for _ in range(100):
        max_tokens, max_tiles = rng.choice([100, 1000, 4096]), rng.choice([4, 16, 48])
        count = rng.randint(1, 60)
        tokens = [rng.randint(1, max_tokens) for _ in range(count)]
        tiles = [rng.randint(0, max_tiles) for _ in range(count)]
        assert plan_packs(tokens, tiles, max_tokens, max_tiles) == \
            _best_fit_by_scanning(tokens, tiles, max_tokens, max_tiles)


def test_a_sample_larger_than_the_budget_is_named():
    with pytest.raises(ValueError, match=r'sample 1 \(9000 tokens, 2 tiles\) exceeds the pack budget of 8192'):
        plan_packs([10, 9000], [0, 2], max_tokens=8192, max_tiles=48)


def test_block_causal_mask_keeps_attention_within_each_sample():
    mask = block_causal_mask(torch.tensor([[1, 1, 2, 2, 2, 0]]), torch.float32)[0, 0]
    allowed = (mask == 0).int()
    assert allowed.tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                                [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]]


def test_per_sample_attention_runs_the_fused_kernel_and_equals_the_block_causal_mask():
    """Packed rows (2 rows of 3 and 2 samples, grouped-query heads) give what one masked attention gives, under
    torch's flash backend alone: the math fallback would hold each sample's (n, n) scores (torch 2.5 takes 3-D
    inputs only there)."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 9, 8, generator=generator)
    key, value = torch.randn(2, 2, 9, 8, generator=generator), torch.randn(2, 2, 9, 8, generator=generator)
    segment_ids = torch.tensor([[1, 1, 1, 2, 2, 3, 3, 3, 3], [1, 1, 1, 1, 1, 2, 2, 2, 2]])
    starts = torch.tensor([0, 3, 5, 9, 14, 18])
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        packed = per_sample_attention(query, key, value, starts, scaling=None, dropout=0.0)
    mask = block_causal_mask(segment_ids, torch.float32)
    reference = F.scaled_dot_product_attention(query, key.repeat_interleave(2, dim=1),
                                               value.repeat_interleave(2, dim=1), attn_mask=mask)
    assert torch.allclose(packed, reference.transpose(1, 2), atol=1e-6)


def test_sample_and_square_weights_follow_each_samples_supervised_tokens():
    labels = torch.tensor([[-100, 5, 6, -100, 7, -100]])
    segments = torch.tensor([[1, 1, 1, 2, 2, 0]])
    assert token_weights(labels, segments, 'token').tolist() == [[0, 1, 1, 0, 1, 0]]
    assert token_weights(labels, segments, 'sample').tolist() == [[0, 0.5, 0.5, 0, 1, 0]]
    assert token_weights(labels, segments, 'square')[0].tolist() == pytest.approx([0, 2 ** -0.5, 2 ** -0.5, 0, 1, 0])
    with pytest.raises(ValueError, match="loss_reduction 'mean' is not one of"):
        token_weights(labels, segments, 'mean')


@pytest.fixture
def mixed_data(tmp_path, tiny_checkpoint):
    """200 text-only, one-image, two-image and long-answer samples (width/height given: exact lengths)."""
    return InternVL_V1_5_Dataset(model_path=tiny_checkpoint('qwen2'),
                                 data_paths=[write_mixed_workload(str(tmp_path), 200)], max_length=4096,
                                 max_dynamic_patch=4)


def test_packs_concatenate_their_samples_and_collate_restarts_positions(mixed_data):
    packed = PackedDataset(mixed_data, max_packed_tokens=4096, max_packed_tiles=16)
    assert len(packed) < len(mixed_data) / 3
    members = packed.packs[0]
    item = packed[0]
    assert item['sample_lengths'].tolist() == [len(mixed_data[i]['input_ids']) for i in members]
    assert torch.equal(item['input_ids'], torch.cat([mixed_data[i]['input_ids'] for i in members]))
    assert item['pixel_values'].shape[0] == sum(mixed_data[i]['pixel_values'].shape[0] for i in members)
    assert packed.length[0] == len(item['input_ids'])  # the estimates are exact with width/height
    batch = internvl_collate_fn([packed[0], packed[1]])['data']
    first = item['sample_lengths'].tolist()
    assert batch['segment_ids'][0, :sum(first)].unique().tolist() == list(range(1, len(first) + 1))
    assert batch['position_ids'][0, first[0]].item() == 0 and batch['position_ids'][0, first[0] - 1] == first[0] - 1


def _padding_fraction(dataset, batch_size: int, grouped: bool) -> float:
    """Padded share of the batches' tokens, in XTuner's length-grouped order (the configs') or a random one."""
    if grouped:
        order = list(LengthGroupedSampler(dataset, per_device_batch_size=batch_size, seed=0,
                                          length_property='modality_length'))
    else:
        order = random.Random(0).sample(range(len(dataset)), len(dataset))
    lengths = dataset.length
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / padded


def test_packing_leaves_under_five_percent_padding_on_a_mixed_workload(mixed_data):
    """Measured here: packed 3.7 % (length-grouped, 2 packs a batch) / 7.6 % (random); unpacked, 4 samples a
    batch, 3.7 % / 42 %."""
    packed = PackedDataset(mixed_data, max_packed_tokens=4096, max_packed_tiles=16)
    assert _padding_fraction(packed, 2, grouped=True) < 0.05
    assert _padding_fraction(packed, 2, grouped=False) < _padding_fraction(mixed_data, 4, grouped=False) / 5


@pytest.mark.parametrize('family,attn,lora', [('qwen2', 'sdpa', False), ('internlm2', 'eager', True),
                                              ('phi3', 'sdpa', False),
                                              pytest.param('qwen3_moe', 'sdpa', True, marks=needs_qwen3),
                                              pytest.param('gpt_oss', 'eager', True, marks=needs_gpt_oss)])
@pytest.mark.parametrize('reduction', ['token', 'sample', 'square'])
def test_packed_loss_and_gradients_equal_unpacked(mixed_data, tiny_checkpoint, family, attn, lora, reduction,
                                                  monkeypatch):
    """fp32 on CPU: the same samples as two packed rows (of different lengths, so one is padded) and as a padded
    batch give the same loss and gradients (tolerance 1e-5 relative), with activation checkpointing on as in the
    configs. SDPA runs one attention call per sample of each pack (no (L, L) mask)."""
    from internvl_plugin.model.modeling import segments
    base = tiny_checkpoint(family)
    dataset = InternVL_V1_5_Dataset(model_path=base, data_paths=[s.annotation for s in mixed_data.sources],
                                    max_length=4096, max_dynamic_patch=4)
    samples = [dataset[i] for i in (0, 1, 2, 3, 4)]

    def pack(parts):
        return {'input_ids': torch.cat([s['input_ids'] for s in parts]),
                'labels': torch.cat([s['labels'] for s in parts]),
                'pixel_values': torch.cat([s['pixel_values'] for s in parts]),
                'image_flags': torch.cat([s['image_flags'] for s in parts]),
                'sample_lengths': torch.tensor([len(s['input_ids']) for s in parts]),
                'pad_token_id': dataset.pad_token_id}

    extra = {'llm_lora': dict(r=4, lora_alpha=8, lora_dropout=0.0), 'freeze_visual_encoder': True} if lora else {}
    model = InternVL_V1_5(base, torch_dtype='float32', use_activation_checkpointing=True, attn_implementation=attn,
                          loss_reduction=reduction, **extra).train()   # checkpointing recomputes in training only
    per_sample_calls = []
    original = segments.per_sample_attention
    monkeypatch.setattr(segments, 'per_sample_attention',
                        lambda *args: per_sample_calls.append(len(args[3]) - 1) or original(*args))

    def loss_and_grads(batch):
        model.zero_grad()
        loss = model(**internvl_collate_fn(batch), mode='loss')['loss']
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    unpacked_loss, unpacked_grads = loss_and_grads(samples)
    assert per_sample_calls == []
    packed_loss, packed_grads = loss_and_grads([pack(samples[:3]), pack(samples[3:])])
    layers = model.model.language_model.config.num_hidden_layers
    # per layer, forward and its recomputation in backward; 5 samples (the padding after the shorter pack comes
    # after its last sample, which causal attention never lets see it)
    assert per_sample_calls == ([5] * 2 * layers if attn == 'sdpa' else [])
    assert torch.allclose(packed_loss, unpacked_loss, rtol=1e-5)
    assert packed_grads.keys() == unpacked_grads.keys() and packed_grads
    for name, grad in unpacked_grads.items():
        assert torch.allclose(packed_grads[name], grad, rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize('config,family,vit', [
    pytest.param('v2_5/internvl_v2_5_qwen2_5_0_5b_finetune.py', 'qwen2', '300m', id='full'),
    pytest.param('v2/internvl_v2_internlm2_2b_lora_finetune.py', 'internlm2', '300m', id='lora'),
    pytest.param('v2_5/internvl_v2_5_internlm2_5_26b_qlora_finetune.py', 'internlm2', '6b', id='qlora',
                 marks=needs_cpu_4bit),
])
@pytest.mark.parametrize('order', ['length-grouped', 'random'])
def test_packed_configs_train_a_step_in_either_order(mixed_data, tiny_checkpoint, tmp_path, config, family, vit,
                                                     order):
    cfg = Config.fromfile(f'{CONFIG_DIR}/{config}')
    base = tiny_checkpoint(family, vit)
    cfg.model.update(model_path=base, loss_reduction='square')
    inner = cfg.train_dataloader.dataset
    inner.update(model_path=base, meta_path=None, data_paths=[s.annotation for s in mixed_data.sources],
                 max_length=4096, max_dynamic_patch=4)
    cfg.train_dataloader.dataset = dict(type=LazyObject('internvl_plugin', 'PackedDataset'), dataset=inner,
                                        max_packed_tokens=4096, max_packed_tiles=16)
    cfg.train_dataloader.batch_size = 1
    if order == 'random':
        cfg.train_dataloader.sampler = dict(type=LazyObject('mmengine.dataset', 'DefaultSampler'), shuffle=True)
    else:
        cfg.train_dataloader.sampler.per_device_batch_size = 1
    loss = _build_and_step(cfg, str(tmp_path / 'work'))
    assert torch.isfinite(torch.tensor(loss)) and loss > 0


def test_packed_sdpa_rows_build_no_square_mask_and_fail_loudly_without_per_sample_attention(mixed_data,
                                                                                            tiny_checkpoint,
                                                                                            monkeypatch):
    """A pack hands SDPA an empty mask marker, not the (L, L) mask transformers 4.57 would build from restarting
    positions; with transformers' plain SDPA in place of the per-sample one, the step fails instead of letting
    the samples of a pack see each other."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32', attn_implementation='sdpa')
    batch = internvl_collate_fn([PackedDataset(mixed_data, max_packed_tokens=4096, max_packed_tiles=16)[0]])
    assert int(batch['data']['segment_ids'].max()) > 1
    per_sample = ALL_ATTENTION_FUNCTIONS['sdpa']
    masks = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        masks.append(None if attention_mask is None else tuple(attention_mask.shape))
        return per_sample(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, 'sdpa', recording)
    loss = model(**batch, mode='loss')['loss']
    assert torch.isfinite(loss)
    assert masks == [(1, 1, 0, 0)] * model.model.language_model.config.num_hidden_layers
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, 'sdpa', per_sample.wraps_sdpa)
    with pytest.raises(RuntimeError, match='must match the size'):
        model(**batch, mode='loss')


def test_a_pack_whose_samples_outgrow_their_estimates_trains_every_sample_in_more_rows(tmp_path, tiny_checkpoint,
                                                                                       caplog):
    """Nine lines claim 10 tokens and a 10x10 image, so the plan makes one pack; each is really a 896x896 image
    (4 tiles + thumbnail, 1,319 tokens). The pack goes as rows that each fit both budgets, and each line
    is named once with its real size."""
    image = save_image(tmp_path / 'big.png', 896, 896)
    data = write_jsonl(tmp_path / 'data.jsonl', [qa(image=image, width=10, height=10, length=10, id=i)
                                                  for i in range(9)])
    dataset = InternVL_V1_5_Dataset(model_path=tiny_checkpoint('qwen2'), data_paths=[data], max_length=4096,
                                    max_dynamic_patch=4)
    packed = PackedDataset(dataset, max_packed_tokens=4096, max_packed_tiles=16)
    assert packed.packs == [list(range(9))]
    with caplog.at_level(logging.WARNING, logger='internvl_plugin'):
        item, again = packed[0], packed[0]
    rows = item['rows']
    assert [len(row['sample_lengths']) for row in rows] == [3, 3, 3]
    assert all(len(row['input_ids']) <= 4096 and len(row['pixel_values']) <= 16 for row in rows)
    assert torch.equal(torch.cat([row['input_ids'] for row in rows]),
                       torch.cat([dataset[i]['input_ids'] for i in range(9)]))
    messages = [record.getMessage() for record in caplog.records if record.name == 'internvl_plugin']
    assert len(messages) == 9 and len({message.split(': ')[0] for message in messages}) == 9
    assert messages[0].startswith(f'{data}:1: planned as 10 tokens and 1 tiles')
    assert 'it is 1319 tokens and 5 tiles; pack 0 outgrew the 4096-token / 16-tile budget and trains as 3 rows' \
        in messages[0]
    batch = internvl_collate_fn([item, packed[0]])['data']
    assert batch['input_ids'].shape[0] == 6 and int(batch['segment_ids'].max()) == 3
    assert batch['pixel_values'].shape[0] == 90
