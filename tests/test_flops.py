"""Model FLOPs of a training step against torch's FLOP counter on the same step."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from internvl_plugin import InternVL_V1_5, InternVL_V1_5_Dataset, PackedDataset, internvl_collate_fn
from internvl_plugin.model.flops import training_step_flops
from internvl_plugin.tiny import write_mixed_workload


@pytest.fixture(scope='module')
def packed_batch(tiny_checkpoint, tmp_path_factory):
    """One pack (no padding) of 8 mixed samples with 10 tiles."""
    folder = tmp_path_factory.mktemp('flops')
    dataset = InternVL_V1_5_Dataset(model_path=tiny_checkpoint('qwen2'), max_length=4096, max_dynamic_patch=2,
                                    data_paths=[write_mixed_workload(str(folder), 8)])
    batch = internvl_collate_fn([PackedDataset(dataset, max_packed_tokens=4096, max_packed_tiles=32)[0]])
    assert int(batch['data']['segment_ids'].max()) == 8 and int(batch['data']['image_flags'].sum()) == 10
    return batch


def counted_step(model, batch):
    """FLOPs torch counts for forward + backward (math SDPA, so attention runs as counted matmuls), without the
    rotary embedding's position matmul (not model FLOPs)."""
    model.train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**batch, mode='loss')['loss'].backward()
    rotary = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items() if name.endswith('rotary_emb'))
    return counter.get_total_flops() - rotary


@pytest.mark.parametrize('trained', [
    pytest.param(dict(), id='everything'),
    pytest.param(dict(freeze_visual_encoder=True), id='frozen-vit'),
    pytest.param(dict(freeze_visual_encoder=True, freeze_llm=True), id='only-mlp1'),
])
def test_step_flops_equal_the_counted_ones(tiny_checkpoint, packed_batch, trained):
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32', use_activation_checkpointing=False,
                          **trained)
    flops = training_step_flops(model.model, packed_batch['data'])
    # The counter sees each sample's full (L, L) attention; model FLOPs take its causal half.
    assert counted_step(model, packed_batch) == flops.matmul + flops.vision_attention + 2 * flops.llm_attention
    assert flops.total == flops.matmul + flops.vision_attention + flops.llm_attention


def test_vision_layers_after_the_selected_one_count_nothing(tiny_checkpoint, packed_batch):
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32', use_activation_checkpointing=False)
    model.model.select_layer = -2  # one of the tiny ViT's two layers runs
    flops = training_step_flops(model.model, packed_batch['data'])
    assert counted_step(model, packed_batch) == flops.matmul + flops.vision_attention + 2 * flops.llm_attention
    model.model.select_layer = -1
    assert training_step_flops(model.model, packed_batch['data']).vision_attention == 2 * flops.vision_attention


def test_lora_step_flops_are_within_one_percent_above_the_counted_ones(tiny_checkpoint, packed_batch):
    """The first layer's frozen q/k/v need no input gradient when nothing before them trains; counted anyway."""
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32', use_activation_checkpointing=False,
                          freeze_visual_encoder=True, freeze_mlp=True, llm_lora=dict(r=4, lora_alpha=8))
    flops = training_step_flops(model.model, packed_batch['data'])
    counted = counted_step(model, packed_batch)
    assert counted < flops.matmul + flops.vision_attention + 2 * flops.llm_attention < 1.01 * counted


def test_padding_adds_no_model_flops(tiny_checkpoint, packed_batch):
    model = InternVL_V1_5(tiny_checkpoint('qwen2'), torch_dtype='float32')
    data = packed_batch['data']
    padded = {key: value for key, value in data.items()}
    for key, fill in (('input_ids', 0), ('labels', -100), ('attention_mask', 0), ('segment_ids', 0)):
        padded[key] = torch.cat([data[key], torch.full((1, 100), fill, dtype=data[key].dtype)], dim=1)
    assert training_step_flops(model.model, padded) == training_step_flops(model.model, data)
