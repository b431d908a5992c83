"""The memory estimate: the step under fake tensors equals the same step with real tensors at tiny sizes (against
torch's own MemTracker where it can track the model), ZeRO's shares, the worst-case batch, the released shapes,
a real-size config within a minute and without real memory, and the command line."""
import os
import re
import resource
import subprocess
import sys

import pytest
import torch
from packaging.version import Version
from conftest import HAS_CPU_4BIT, HAS_GPT_OSS, HAS_QWEN3, _version, needs_qwen3
from helpers import copy_with_config
from mmengine.optim import OptimWrapper
from test_configs import RELEASED as CONFIG_MODELS

from internvl_plugin import InternVL_V1_5, InternVLAdamW
from internvl_plugin.memory.estimate import (GIB, ConfigModel, Estimate, Workload, ZeroSettings, estimate_config,
                                             largest_fitting, model_arguments, per_gpu_memory, read_workload,
                                             read_zero_settings, recipe_defaults, table_row)
from internvl_plugin.memory.fake_outputs import OutputMemo
from internvl_plugin.memory.moe_routing import balanced_choice, estimated_routing, representative_experts, stack_experts
from internvl_plugin.memory.packed_4bit import Packed4bitLinear, nf4_bytes
from internvl_plugin.memory.stacked_experts import StackedExperts, group_sizes
from internvl_plugin.memory.step import (StepMemory, build_fake_model, dropout_as_on_a_gpu, measure_step,
                                         worst_case_batch)
from internvl_plugin.memory.tracking import FakeFloatMode, StorageTracker
from internvl_plugin.model.checkpoint.load import build_network
from internvl_plugin.model.modeling.moe import ExpertLinears, run_experts
from internvl_plugin.released import RELEASED, RELEASED_PARTS
from internvl_plugin.tiny import shape_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, 'tools', 'estimate_memory.py')
LORA = dict(llm_lora=dict(r=16, lora_alpha=32, lora_dropout=0.05), freeze_visual_encoder=True, freeze_mlp=True)
# (batch_size, max_length, tiles per sample, pack tile budget)
WORKLOADS = {'unpacked': (2, 2048, 7, None), 'packed': (1, 4096, 5, 14)}


def _optim_wrapper(model: torch.nn.Module) -> OptimWrapper:
    return OptimWrapper(InternVLAdamW(model.parameters(), lr=1e-5, weight_decay=0.05),
                        clip_grad=dict(max_norm=1.0, error_if_nonfinite=False))


def _estimate(kwargs: dict, workload: tuple) -> StepMemory:
    mode = FakeFloatMode()
    model = build_fake_model(mode, **kwargs)
    return measure_step(mode, model, _optim_wrapper(model), worst_case_batch(model, *workload), 2)


def _real_step(model, optimizer, batch) -> None:
    data = model.data_preprocessor(batch, True)
    loss = model(**data, mode='loss')['loss']
    loss.backward()
    del loss, data
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(trainable, max_norm=1.0, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize('workload', sorted(WORKLOADS))
def test_estimate_equals_torch_memtracker_on_the_same_real_step(tiny_checkpoint, workload):
    """Full fine-tune (everything trains, which MemTracker needs), unpacked and packed: the fake step's peak and its
    parts equal what torch.distributed._tools.mem_tracker counts on real tensors."""
    from torch.distributed._tools.mem_tracker import MemTracker
    kwargs = dict(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', use_activation_checkpointing=True,
                  loss_reduction='square' if workload == 'packed' else 'token')
    estimate = _estimate(kwargs, WORKLOADS[workload])
    model = InternVL_V1_5(random_init=True, **kwargs)
    optimizer = InternVLAdamW(model.parameters(), lr=1e-5, weight_decay=0.05, foreach=True)
    for param in model.parameters():   # states and accumulated gradients, as after a first step
        param.grad = torch.zeros_like(param)
    optimizer.step()
    model.train()
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        _real_step(model, optimizer, worst_case_batch(model, *WORKLOADS[workload]))
    real = {str(kind): value for kind, value in tracker.get_tracker_snapshot('peak')[torch.device('cpu')].items()}
    assert sum(estimate.peak.values()) == pytest.approx(real['Total'], rel=0.05)
    assert estimate.peak['gradients'] == real['_MemRefType.GRAD']
    assert estimate.peak['optimizer states'] == pytest.approx(real['_MemRefType.OPT'], rel=0.01)
    assert estimate.peak['activations'] + estimate.peak['logits / loss'] > 0.5 * real['Total']   # the batch matters


@pytest.mark.parametrize('quantized', [False, True], ids=['lora', 'qlora'])
def test_estimate_equals_the_real_step_with_frozen_and_4bit_weights(tiny_checkpoint, quantized):
    """LoRA and QLoRA (MemTracker cannot track frozen parameters): the same tracker on real tensors, with
    bitsandbytes' real nf4 layers where this world has CPU 4-bit kernels. Everywhere: the 4-bit layers save what
    nf4 saves against the same model in bf16."""
    kwargs = dict(model_path=tiny_checkpoint('qwen2'), torch_dtype='bfloat16', use_activation_checkpointing=True,
                  quantization_llm=quantized, **LORA)
    workload = WORKLOADS['unpacked']
    estimate = _estimate(kwargs, workload)
    if quantized:
        mode = FakeFloatMode()
        fake = build_fake_model(mode, **kwargs)
        layers = [m for m in fake.modules() if isinstance(m, Packed4bitLinear)]
        assert layers and all('layers.' in name for name, m in fake.named_modules() if isinstance(m, Packed4bitLinear))
        saved = sum(2 * m.in_features * m.out_features - nf4_bytes(m.in_features * m.out_features) for m in layers)
        unquantized = _estimate(dict(kwargs, quantization_llm=False), workload)
        assert unquantized.peak['parameters'] - estimate.peak['parameters'] == saved   # weights + statistics
    if quantized and not HAS_CPU_4BIT:
        return   # bitsandbytes 0.45 (the pinned world) has no CPU 4-bit layers to compare with
    model = InternVL_V1_5(random_init=True, **kwargs).to('cpu')
    statistics = []
    for param in model.parameters():
        state = getattr(param, 'quant_state', None)
        if state is not None:
            statistics += [state.absmax, state.code, state.state2.absmax, state.state2.code]
    assert bool(statistics) == quantized
    real = measure_step(None, model, _optim_wrapper(model), worst_case_batch(model, *workload), 2, statistics)
    assert sum(estimate.peak.values()) == pytest.approx(sum(real.peak.values()), rel=0.05)
    assert estimate.peak['activations'] == pytest.approx(real.peak['activations'], rel=0.05)
    assert estimate.trainable_bytes == real.trainable_bytes


STEP = StepMemory(peak={'parameters': 1000, 'gradients': 400, 'optimizer states': 800, 'activations': 5000,
                        'logits / loss': 600},
                  transient_peak={'parameters': 1000, 'gradients': 0, 'optimizer states': 800, 'activations': 5200,
                                  'logits / loss': 700},
                  parameter_bytes=1000, trainable_parameters=200, trainable_bytes=400, largest_module_bytes=100,
                  seconds=0.0)


def test_dropout_keeps_the_one_byte_mask_a_gpu_keeps():
    """Inside the step dropout saves what CUDA's kernel saves for backward, a bool mask beside its output, where
    the CPU's own keeps its noise in the input's dtype; outside, the layer is its own again."""
    layer = torch.nn.Dropout(0.25)
    x = torch.randn(1000, requires_grad=True)
    kept = {}
    for on_gpu in (False, True):
        with StorageTracker() as tracker:
            if on_gpu:
                with dropout_as_on_a_gpu(layer):
                    y = layer(x)
            else:
                y = layer(x)
        kept[on_gpu] = tracker.totals['activations']
        assert 650 < int((y != 0).sum()) < 850
        del y
    assert kept == {False: 1000 * 4 + 1000 * 4, True: 1000 * 4 + 1000 * 1}
    assert 'forward' not in vars(layer)
    layer.eval()
    with dropout_as_on_a_gpu(layer):
        assert layer(x) is x


@pytest.mark.parametrize('zero, gpus, expected', [
    (None, 1, (1000, 400, 800, 5000, 600)),                          # the measured peak as it is
    (None, 4, (1000, 800, 800, 5000, 600)),                          # + DDP's gradient buckets
    (ZeroSettings('z1', 1), 4, (1000, 400, 600, 5200, 700)),          # fp32 master + Adam: 12 B / param / GPU
    (ZeroSettings('z2', 2), 4, (1000, 100, 600, 5200, 700)),          # gradients partitioned too
    (ZeroSettings('z3', 3), 4, (350, 100, 600, 5200, 700)),           # parameters too, less the gathered module
    (ZeroSettings('z3o', 3, True, True), 4, (100, 100, 0, 5200, 700)),  # offloaded to the CPU
])
def test_zero_stages_partition_the_measured_sizes(zero, gpus, expected):
    memory = per_gpu_memory(STEP, gpus, zero)
    assert tuple(memory[k] for k in ('parameters', 'gradients', 'optimizer states', 'activations',
                                     'logits / loss')) == expected


def test_under_zero_the_step_without_the_optimizer_gives_every_stage_the_same_estimate(tiny_checkpoint):
    """DeepSpeed's optimizer replaces the config's and its states are computed, so under ZeRO the estimate leaves
    the config's optimizer step out (measure_step's optimizer_step): no ZeRO number moves, while the step's own
    peak (what no DeepSpeed reads) loses its optimizer states."""
    steps = []
    for optimizer_step in (True, False):
        mode = FakeFloatMode()
        model = build_fake_model(mode, model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', **LORA)
        steps.append(measure_step(mode, model, _optim_wrapper(model), worst_case_batch(model, *WORKLOADS['unpacked']),
                                  2, optimizer_step=optimizer_step))
    stepped, left_out = steps
    for stage in (1, 2, 3):
        zero = ZeroSettings(f'z{stage}', stage)
        assert per_gpu_memory(left_out, 4, zero) == per_gpu_memory(stepped, 4, zero)
    assert stepped.peak['optimizer states'] > 0 and left_out.peak['optimizer states'] == 0


def test_deepspeed_names_are_read_from_xtuners_json_files(tmp_path):
    assert [read_zero_settings(f'deepspeed_zero{k}').stage for k in (1, 2, 3)] == [1, 2, 3]
    offload = read_zero_settings('deepspeed_zero3_offload')
    assert (offload.offload_optimizer, offload.offload_parameters) == (True, True)
    with pytest.raises(ValueError, match="--deepspeed 'deepspeed_zero9' is neither a json file nor one of"):
        read_zero_settings('deepspeed_zero9')
    bad = tmp_path / 'ds.json'
    bad.write_text('{"zero_optimization": {"stage": 5}}')
    with pytest.raises(ValueError, match=r'ds.json: zero_optimization.stage is 5, expected 0, 1, 2 or 3'):
        read_zero_settings(str(bad))


def test_workloads_follow_each_config(tmp_path):
    from mmengine.config import Config
    lora = os.path.join(REPO, 'configs', 'v2_5', 'internvl_v2_5_internlm2_5_8b_lora_finetune.py')
    packed = os.path.join(REPO, 'configs', 'v3_5', 'internvl_v3_5_qwen3_8b_finetune.py')
    assert recipe_defaults(lora) == (2, 'deepspeed_zero1') and recipe_defaults(packed) == (8, 'deepspeed_zero3')
    workload = read_workload(Config.fromfile(lora), lora, {})
    assert (workload.batch_size, workload.max_length, workload.tiles, workload.pack_tiles,
            workload.accumulative_counts) == (4, 8192, 7, None, 2)
    workload = read_workload(Config.fromfile(packed), packed, {})
    assert (workload.batch_size, workload.max_length, workload.tiles, workload.pack_tiles) == (1, 32768, 13, 96)


def test_worst_case_batches_fill_their_budgets(tiny_checkpoint):
    model = build_fake_model(FakeFloatMode(), model_path=tiny_checkpoint('qwen2'), torch_dtype='float32')
    data = worst_case_batch(model, 3, 2048, 7)['data']
    assert data['input_ids'].shape == (3, 2048) and data['pixel_values'].shape[0] == 21
    assert int((data['input_ids'] == model.model.img_context_token_id).sum()) == 21 * 256
    assert int((data['labels'] != -100).sum()) == 3 * (2048 - 3 - 7 * 256)
    pack = worst_case_batch(model, 1, 4096, 5, 14)['data']
    assert pack['input_ids'].shape == (1, 4096) and pack['pixel_values'].shape[0] == 14
    assert int(pack['segment_ids'].max()) == 3 and int((pack['position_ids'] == 0).sum()) == 3


def test_released_shapes_have_their_names_parameter_counts_and_the_configs_families():
    for name, shape in {**RELEASED, **RELEASED_PARTS}.items():
        installed = {'qwen3': HAS_QWEN3, 'qwen3_moe': HAS_QWEN3, 'gpt_oss': HAS_GPT_OSS}.get(shape.llm, True)
        if not installed:   # transformers 4.48 (pinned): one line names the release
            with torch.device('meta'), pytest.raises(ValueError, match='ForCausalLM needs transformers >= 4.5'):
                build_network(shape_config(shape), None, 0, name)
            continue
        with torch.device('meta'):
            network = build_network(shape_config(shape), None, 0, name)
        billions = sum(p.numel() for p in network.parameters()) / 1e9
        stated = 34 if name in RELEASED_PARTS else CONFIG_MODELS[name][2]
        assert billions == pytest.approx(stated, rel=0.2), name   # "8B" is 8.1, "1B" 0.94, "34B" the LLM's
        if name in CONFIG_MODELS:
            assert (shape.llm, shape.vit) == CONFIG_MODELS[name][:2], name
    assert set(CONFIG_MODELS) == set(RELEASED)


@needs_qwen3
@pytest.mark.parametrize('mode', ['full', 'lora', 'qlora'])
def test_a_qwen3_moe_estimate_equals_the_real_step_whatever_the_router_chose(tiny_checkpoint, mode):
    """The fake step routes by the estimate's rule (moe_routing: every expert the same number of tokens); the real
    step routes as its router says. What the experts save is the same for any routing: the peaks agree."""
    kwargs = dict(model_path=tiny_checkpoint('qwen3_moe'), torch_dtype='bfloat16', use_activation_checkpointing=True)
    if mode != 'full':
        kwargs.update(LORA, quantization_llm=mode == 'qlora', llm_lora=dict(r=16, lora_alpha=32, lora_dropout=0.0))
    workload = WORKLOADS['unpacked']
    fake_mode = FakeFloatMode()
    fake = build_fake_model(fake_mode, **kwargs)
    with estimated_routing(fake) as replaced:
        estimate = measure_step(fake_mode, fake, _optim_wrapper(fake), worst_case_batch(fake, *workload), 2)
    layers = fake.model.language_model.config.num_hidden_layers
    fused = _version('transformers') >= Version('5')   # a router and a 3-D experts module per layer
    assert replaced == (2 * layers if fused and mode != 'qlora' else layers)
    if mode == 'qlora' and not HAS_CPU_4BIT:
        return
    model = InternVL_V1_5(random_init=True, **kwargs).to('cpu')
    statistics = [s for p in model.parameters() if getattr(p, 'quant_state', None) is not None
                  for s in (p.quant_state.absmax, p.quant_state.code, p.quant_state.state2.absmax,
                            p.quant_state.state2.code)]
    real = measure_step(None, model, _optim_wrapper(model), worst_case_batch(model, *workload), 2, statistics)
    assert sum(estimate.peak.values()) == pytest.approx(sum(real.peak.values()), rel=0.05)
    assert estimate.peak['activations'] == pytest.approx(real.peak['activations'], rel=0.05)
    assert estimate.trainable_bytes == real.trainable_bytes


@pytest.mark.parametrize('reference', ['copy', 'adapters'])
def test_a_preference_estimate_equals_the_real_step_with_its_reference(tiny_checkpoint, reference):
    """MPO: the policy's pass over chosen and rejected (one row per pair), the reference's pass without gradients
    (a frozen copy, or the same network with LoRA off) and the loss; the copy's weights are counted as parameters."""
    from internvl_plugin import InternVLPreference
    kwargs = dict(model_path=tiny_checkpoint('qwen2'), torch_dtype='float32', use_activation_checkpointing=True,
                  reference=reference, **(LORA if reference == 'adapters' else {}))
    workload = Workload(batch_size=2, max_length=1024, tiles=3, pack_tiles=None, accumulative_counts=2,
                        pack_pairs=True)
    mode = FakeFloatMode()
    fake = build_fake_model(mode, InternVLPreference, **kwargs)
    estimate = measure_step(mode, fake, _optim_wrapper(fake), workload.batch(fake), 2)
    model = InternVLPreference(random_init=True, **kwargs)
    real = measure_step(None, model, _optim_wrapper(model), workload.batch(model), 2)
    assert sum(estimate.peak.values()) == pytest.approx(sum(real.peak.values()), rel=0.05)
    assert estimate.peak['activations'] == pytest.approx(real.peak['activations'], rel=0.05)
    assert estimate.trainable_bytes == real.trainable_bytes
    network = sum(p.numel() * p.element_size() for p in model.model.parameters())
    assert estimate.parameter_bytes == (2 * network if reference == 'copy' else network)


def test_preference_pairs_are_two_sequences_of_max_length_sharing_the_image(tiny_checkpoint):
    model = build_fake_model(FakeFloatMode(), model_path=tiny_checkpoint('qwen2'), torch_dtype='float32')
    for pack_pairs, rows in ((True, 2), (False, 4)):
        data = worst_case_batch(model, 2, 1024, 3, pack_pairs=pack_pairs)['data']
        assert data['input_ids'].shape == (rows, 2048 if pack_pairs else 1024)
        assert data['pixel_values'].shape[0] == 6 and data['tile_order'].shape[0] == 12
        assert sorted(data['sequence_ids'].unique().tolist()) == [0, 1, 2, 3]
        assert int((data['labels'] != -100).sum()) == 4 * (1024 - 3 - 3 * 256)


def test_an_mpo_config_is_estimated_with_its_pairs_and_reference_copy():
    from mmengine.config import Config
    config = os.path.join(REPO, 'configs', 'v2_5', 'internvl_v2_5_internlm2_5_8b_mpo.py')
    workload = read_workload(Config.fromfile(config), config, {})
    assert workload == Workload(1, 8192, 13, None, 32, pack_pairs=True)
    assert workload.describe() == '1 pair(s) of 2 x 8192 tokens (one row each), 13 tiles each'
    assert recipe_defaults(config) == (8, 'deepspeed_zero1')


def test_the_routing_rule_gives_every_token_top_k_different_experts_and_each_expert_its_share():
    chosen = balanced_choice(1000, 8, 128, torch.device('cpu'))
    assert chosen.shape == (1000, 8) and all(len(set(row.tolist())) == 8 for row in chosen)
    counts = torch.bincount(chosen.flatten(), minlength=128)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 8000


@needs_qwen3
def test_a_fake_model_built_with_one_expert_per_group_holds_the_tensors_of_every_expert(tiny_checkpoint, tmp_path):
    """QLoRA's per-expert layers are built one per group (moe_routing.representative_experts) and stacked group-size
    times: the same parameters and buffers, name by name (shape, dtype, trainability), as stacking all of them."""
    folder = copy_with_config(tiny_checkpoint('qwen3_moe'), tmp_path / 'twenty-experts',
                              lambda config: config['llm_config'].update(num_experts=20))   # groups of 10, 5, 2 and 3
    kwargs = dict(model_path=folder, torch_dtype='bfloat16', quantization_llm=True, **LORA)
    fake = build_fake_model(FakeFloatMode(), **kwargs)
    with torch.device('meta'):
        whole = InternVL_V1_5(random_init=True, **kwargs)
    layers = whole.model.language_model.config.num_hidden_layers
    assert stack_experts(whole) == layers

    def described(model: torch.nn.Module) -> list:
        return [(name, tuple(t.shape), t.dtype, t.requires_grad)
                for name, t in [*model.named_parameters(), *model.named_buffers()]]

    assert described(fake) == described(whole)
    if _version('transformers') >= Version('5'):   # QLoRA splits the 3-D experts into ExpertLinears
        with torch.device('meta'), representative_experts():
            held = InternVL_V1_5(random_init=True, **kwargs)
        experts = next(m for m in held.modules() if isinstance(m, ExpertLinears))
        assert experts.num_experts == 20 and sum(key.isdigit() for key in experts._modules) == 4
    stacked = [m for m in fake.modules() if isinstance(m, StackedExperts)]
    assert len(stacked) == layers and stacked[0].num_experts == 20
    assert [group.up_proj.lora_A.shape[0] for group in stacked[0].groups] == [10, 5, 2, 3]
    assert group_sizes(128) == [64, 32, 16, 16] and group_sizes(1) == [1]


def test_remembered_fake_outputs_are_the_fake_modes_own():
    """A second call of an operation on inputs of the same metadata is answered from memory with what the fake mode
    answers: new storages where it makes new ones, views on the input's storage, the input itself in place; an
    operation that changes its input's shape is asked of the fake mode every time."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    aten = torch.ops.aten
    fake = FakeTensorMode()
    memo = OutputMemo(fake)
    with fake:
        x, w = torch.empty(4, 6), torch.empty(6, 3)
        cases = [(aten.mm.default, (x, w), {}), (aten.t.default, (x,), {}), (aten.add_.Tensor, (x, x), {}),
                 (aten.native_dropout.default, (x, 0.5, True), {}), (aten.split.Tensor, (x, 2), {}),
                 (aten._to_copy.default, (x,), {'dtype': torch.bfloat16}), (aten.mul.Tensor, (x, 2), {})]
        for func, args, kwargs in cases:
            expected = func(*args, **kwargs)
            memo.run(func, args, kwargs)
            again = memo.run(func, args, kwargs)
            assert type(again) is type(expected)
            pairs = list(zip(expected, again)) if isinstance(expected, (list, tuple)) else [(expected, again)]
            for want, got in pairs:
                assert isinstance(got, FakeTensor) and got.fake_device == want.fake_device
                assert (got.shape, got.stride(), got.storage_offset(), got.dtype) == \
                    (want.shape, want.stride(), want.storage_offset(), want.dtype)
                shares = got.untyped_storage()._cdata == x.untyped_storage()._cdata
                assert shares == (want.untyped_storage()._cdata == x.untyped_storage()._cdata)
                assert (got is x) == (want is x)
                if not shares:
                    assert got.untyped_storage().nbytes() == want.untyped_storage().nbytes()
                    assert got.untyped_storage()._cdata != want.untyped_storage()._cdata
        assert sum(plan is not None for plan in memo.plans.values()) == len(cases)
        y = torch.empty(4, 6)
        for _ in range(3):
            memo.run(aten.t_.default, (y,), {})
        assert y.shape == (6, 4)   # remembered as "returns its input", the third call would have left (4, 6)


@needs_qwen3
def test_stacked_experts_compute_what_the_per_expert_layers_do_with_lora_on_and_off(tiny_checkpoint):
    """The estimate's stand-in for per-expert layers (QLoRA's, transformers 4's) on real tensors: the same output
    as each expert's own LoRA layers, and the base layers' alone while the adapters are disabled."""
    model = InternVL_V1_5(model_path=tiny_checkpoint('qwen3_moe'), torch_dtype='float32', expert_linears=True,
                          **LORA).eval()
    block = next(m for m in model.modules() if type(m).__name__ == 'Qwen3MoeSparseMoeBlock')
    experts = block.experts
    experts = [getattr(experts, str(i)) for i in range(experts.num_experts)] if isinstance(experts, ExpertLinears) \
        else list(experts)
    act_fn = experts[0].act_fn if hasattr(experts[0], 'act_fn') else block.experts.act_fn
    for expert in experts:
        for name in ('gate_proj', 'up_proj', 'down_proj'):
            torch.nn.init.normal_(getattr(expert, name).lora_B['default'].weight)   # peft starts B at zero

    def each_expert(layer: str):
        def run(index: int, x: torch.Tensor) -> torch.Tensor:
            gate, up, down = (getattr(experts[index], name) for name in ('gate_proj', 'up_proj', 'down_proj'))
            if layer == 'base':
                gate, up, down = gate.base_layer, up.base_layer, down.base_layer
            return down(act_fn(gate(x)) * up(x))
        return run

    top_k = model.model.language_model.config.num_experts_per_tok
    tokens = 9 * len(experts)   # slots the experts share evenly (else one repeats a slot: the same sizes, not values)
    hidden = torch.randn(tokens, model.model.language_model.config.hidden_size)
    chosen = balanced_choice(tokens, top_k, len(experts), hidden.device)
    weights = torch.rand(tokens, top_k)
    with torch.no_grad():
        expected = {layer: run_experts(hidden, chosen, weights, len(experts), each_expert(layer))
                    for layer in ('lora', 'base')}
        layers = model.model.language_model.config.num_hidden_layers
        assert stack_experts(model) == layers
        stacked = next(m for m in model.modules() if isinstance(m, StackedExperts))
        assert torch.allclose(stacked(hidden, chosen, weights), expected['lora'], atol=1e-5)
        with model.model.language_model.disable_adapter():
            assert torch.allclose(stacked(hidden, chosen, weights), expected['base'], atol=1e-5)
        assert not torch.allclose(expected['lora'], expected['base'], atol=1e-3)


def test_a_model_without_known_shapes_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"x.py: model 'nobody/unknown' is not a local folder with a config.json "
                                         r'nor a released checkpoint this tool knows; give --model-config PATH'):
        model_arguments({'type': InternVL_V1_5, 'model_path': 'nobody/unknown'}, 'x.py', str(tmp_path))
    with pytest.raises(ValueError, match=r"x.py: model.type is 'Other'; expected InternVL_V1_5 or InternVLPreference"):
        model_arguments({'type': 'Other', 'model_path': 'a'}, 'x.py', str(tmp_path))
    bad = tmp_path / 'config.json'
    bad.write_text('{"llm_config": {}}')
    with pytest.raises(ValueError, match='expected an InternVL config.json with vision_config and llm_config'):
        model_arguments({'type': InternVL_V1_5, 'model_path': 'a'}, 'x.py', str(tmp_path / 'out'), str(bad))


def test_a_real_size_config_is_estimated_in_under_a_minute_without_real_memory():
    """InternVL2_5-1B LoRA at its real shapes: its 938M parameters counted exactly, nothing allocated."""
    config = os.path.join(REPO, 'configs', 'v2_5', 'internvl_v2_5_qwen2_5_0_5b_lora_finetune.py')
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    estimate = estimate_config(config)
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2 ** 20
    assert estimate.step.seconds < 60 and grown_gib < 2
    with torch.device('meta'):
        network = build_network(shape_config(RELEASED['OpenGVLab/InternVL2_5-1B']), None, 0, '1b')
    frozen = sum(p.numel() for p in network.parameters())
    lora = estimate.step.trainable_parameters
    # bf16 weights, fp32 adapters (peft's autocast_adapter_dtype); ZeRO-1 keeps them whole
    assert estimate.per_gpu['parameters'] == 2 * frozen + 4 * lora
    assert estimate.per_gpu['optimizer states'] == 12 * lora // 2         # 2 GPUs, the recipe's
    assert 2 * GIB < estimate.total < 80 * GIB and estimate.workload.batch_size == 4


def test_where_the_data_is_there_the_worst_batch_is_the_datas_own(tiny_checkpoint, tmp_path):
    """Rows as long as the longest sample, with the most tiles any sample has (the dataset's own estimates: here the
    two-image sample's 6, its images sharing the tile budget); --no-data keeps the config's worst case
    (8192 tokens, 6 tiles and the thumbnail)."""
    import json
    from helpers import qa, save_image, write_jsonl
    for name in ('a.jpg', 'b.jpg', 'c.jpg'):   # the lines' width / height give the tiles; no image is opened
        save_image(tmp_path / name, 8, 8)
    lines = [qa('<image>\nWhat is it?', 'A cat.', image='a.jpg', width=448, height=448),
             qa('<image>\n<image>\nAnd these?', 'Two dogs. ' * 40, image=['b.jpg', 'c.jpg'], width=[1344, 1344],
                height=[896, 896]),
             qa('Just text?', 'Yes.')]
    data = write_jsonl(tmp_path / 'pairs.jsonl', lines)
    (tmp_path / 'meta.json').write_text(json.dumps({'mine': {'root': str(tmp_path), 'annotation': data}}))
    source = open(os.path.join(REPO, 'configs', 'v2_5', 'internvl_v2_5_qwen2_5_0_5b_lora_finetune.py')).read()
    config = tmp_path / 'mine.py'
    config.write_text(source.replace("path = 'OpenGVLab/InternVL2_5-1B'", f"path = {tiny_checkpoint('qwen2')!r}")
                      .replace("meta_path = 'data/meta.json'", f"meta_path = {str(tmp_path / 'meta.json')!r}"))
    from internvl_plugin import InternVL_V1_5_Dataset
    dataset = InternVL_V1_5_Dataset(model_path=tiny_checkpoint('qwen2'), meta_path=str(tmp_path / 'meta.json'),
                                    max_length=8192, max_dynamic_patch=6)
    model = ConfigModel(str(config))
    assert model.workload == Workload(batch_size=4, max_length=max(dataset.length), tiles=max(dataset.tile_counts),
                                      pack_tiles=None, accumulative_counts=2, data_samples=3)
    assert (model.workload.tiles, model.workload.max_length < 8192) == (6, True)
    model.close()
    assert ConfigModel(str(config), use_data=False).workload == Workload(4, 8192, 7, None, 2)


def test_a_table_row_says_what_fits_and_whether_smaller_batches_were_tried():
    workload = Workload(batch_size=2, max_length=4096, tiles=7, pack_tiles=None, accumulative_counts=1)
    estimate = Estimate('configs/x.py', 'm', workload, 8, read_zero_settings('deepspeed_zero3'),
                        dict(STEP.peak, activations=90 * GIB), STEP, False)
    smaller = Workload(batch_size=1, max_length=4096, tiles=7, pack_tiles=None, accumulative_counts=2)
    assert table_row(estimate, 80, smaller).endswith('| **does not fit**: 1 x 4096 tokens, 7 tiles each does |')
    assert table_row(estimate, 80, None).endswith('| **does not fit**: nothing does |')
    assert table_row(estimate, 80, None, searched=False).endswith('| **does not fit** (smaller batches not tried) |')
    assert table_row(estimate, 100, None, searched=False).endswith('| 90.0 | fits |')


class _QuadraticAttention:
    """A model whose step takes 10 GiB plus (length / 1024)^2 GiB of activations per row, and whose
    13 tiles need a row of 3328 tokens: eager attention, which a guess per token underestimates."""

    def __init__(self):
        self.measured = []

    def measure(self, workload, zero=None):
        self.measured.append(workload.max_length)
        if workload.max_length < 3328:
            raise ValueError(f'13 tiles take 3328 tokens, more than a {workload.max_length}-token sample holds')
        activations = int(workload.batch_size * (workload.max_length / 1024) ** 2 * GIB)
        return StepMemory({'parameters': 10 * GIB, 'gradients': 0, 'optimizer states': 0, 'activations': 0,
                           'logits / loss': 0}, {'activations': activations, 'logits / loss': 0}, 10 * GIB, 0, 0, 0, 0.0)


def test_the_longest_fitting_row_is_found_past_lengths_too_short_for_the_tiles():
    model = _QuadraticAttention()
    workload = Workload(batch_size=1, max_length=16384, tiles=13, pack_tiles=None, accumulative_counts=1)
    first = Estimate('configs/x.py', 'm', workload, 1, read_zero_settings('deepspeed_zero2'),
                     per_gpu_memory(model.measure(workload), 1, read_zero_settings('deepspeed_zero2')),
                     None, False)
    assert first.total == 266 * GIB
    largest = largest_fitting(model, first, 40 * GIB)
    # 40 GiB holds rows up to 5.6k tokens. Per token, 16384 predicts 1024 (too short for the tiles: halved up to
    # 8192, too long), and 8192 predicts 3072 (too short again: halved up to 5120, which fits).
    assert model.measured == [16384, 1024, 8192, 3072, 5120]
    assert (largest.batch_size, largest.max_length) == (1, 5120)
    assert largest_fitting(_QuadraticAttention(), first, 11 * GIB) is None   # 3328 tokens need 20.6 GiB


def test_command_line_says_whether_it_fits_and_what_does(tiny_checkpoint):
    config = os.path.join(REPO, 'configs', 'v2_5', 'internvl_v2_5_qwen2_5_0_5b_lora_finetune.py')
    result = subprocess.run([sys.executable, TOOL, config, '--model-config', tiny_checkpoint('qwen2'),
                             '--gpu-memory', '0.2', '--gpus', '1', '--deepspeed', 'deepspeed_zero2'],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert 'worst-case batch: 4 x 8192 tokens, 7 tiles each' in out and '(ZeRO-2) over 1 GPU(s)' in out
    peak = float(re.search(r'peak per GPU: ([\d.]+) GiB', out).group(1))
    parts = [float(x) for x in re.findall(r'^  (?:parameters|gradients|optimizer states|activations|logits / loss)'
                                          r' +([\d.]+) GiB', out, re.M)]
    assert len(parts) == 5 and sum(parts) == pytest.approx(peak, abs=0.03)
    assert re.search(r'does not fit in 0.2 GiB \(\d+%\)', out)
    rows = int(re.search(r'largest that fits: (\d+) x 8192 tokens', out).group(1))
    assert 1 <= rows < 4
    result = subprocess.run([sys.executable, TOOL, config, '--deepspeed', 'zero9'], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(
        "error: --deepspeed 'zero9' is neither a json file nor one of xtuner's")


def test_the_readme_table_has_a_row_for_every_training_config():
    import glob
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        rows = set(re.findall(r'^\| (configs/\S+\.py) \|', f.read(), re.M))
    configs = {os.path.relpath(path, REPO) for path in glob.glob(os.path.join(REPO, 'configs', '*', '*.py'))
               if not path.endswith('convert_to_official.py')}
    assert configs - rows == set() and rows - configs == set()
