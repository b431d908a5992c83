"""Mixture-of-experts LLMs (Qwen3-MoE for InternVL3.5-30B-A3B / 241B-A28B, GPT-OSS for InternVL3.5-20B-A4B): the
router's load-balancing loss in the training loss, LoRA on attention and experts with the router frozen, and
checkpoints that keep the official key layout."""
import os
import warnings

import pytest
import torch
from conftest import needs_cpu_4bit, needs_gpt_oss, needs_qwen3
from helpers import image_batch
from safetensors.torch import load_file

from internvl_plugin import InternVL_V1_5
from internvl_plugin.model.modeling.moe import load_balancing_loss

MOE = [pytest.param('qwen3_moe', marks=needs_qwen3), pytest.param('gpt_oss', marks=needs_gpt_oss)]


def tiny_moe_llm(family):
    """A transformers MoE causal LM of the family, with three layers and six experts."""
    import transformers
    if family == 'qwen3_moe':
        config = transformers.Qwen3MoeConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=6, num_experts_per_tok=2,
            router_aux_loss_coef=0.5)
    else:
        config = transformers.GptOssConfig(
            vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, num_local_experts=6, num_experts_per_tok=2, sliding_window=4,
            layer_types=['sliding_attention', 'full_attention', 'sliding_attention'], router_aux_loss_coef=0.5)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation='eager')


@pytest.mark.parametrize('family', MOE)
def test_the_load_balancing_loss_is_the_one_transformers_adds(family):
    llm = tiny_moe_llm(family)
    ids = torch.randint(0, 64, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    for attention_mask in (None, mask):
        out = llm(ids, attention_mask=attention_mask, output_router_logits=True)
        ours = load_balancing_loss(out.router_logits, 6, 2, attention_mask)
        assert torch.allclose(ours, out.aux_loss, rtol=1e-5), attention_mask  # before the coefficient
    even = [torch.zeros(10, 6)]
    assert torch.allclose(load_balancing_loss(even, 6, 2), torch.tensor(2.0))  # top_k for an even router


@pytest.mark.parametrize('family', MOE)
def test_training_adds_the_router_loss_with_the_configs_coefficient(tiny_checkpoint, family):
    path = tiny_checkpoint(family)
    model = InternVL_V1_5(path, torch_dtype='float32', use_activation_checkpointing=False)
    coef = model.model.language_model.config.router_aux_loss_coef
    assert model.model.router_aux_loss.coef == coef == {'qwen3_moe': 0.001, 'gpt_oss': 0.9}[family]
    without = InternVL_V1_5(path, torch_dtype='float32', use_activation_checkpointing=False, router_aux_loss_coef=0)
    assert without.model.router_aux_loss is None
    batch = image_batch(model)
    network = model.model
    decoder = network.language_model.get_decoder()(
        inputs_embeds=network.embed(batch['input_ids'], batch['pixel_values'], batch['image_flags']),
        attention_mask=batch['attention_mask'], output_router_logits=True)
    experts = network.router_aux_loss.num_experts
    aux = load_balancing_loss(decoder.router_logits, experts, 2, batch['attention_mask'])
    assert experts == 4 and aux > 0
    total, lm_only = model(batch)['loss'], without(batch)['loss']
    assert torch.allclose(total, lm_only + coef * aux, rtol=1e-5)
    total.backward()
    router = 'mlp.gate' if family == 'qwen3_moe' else 'mlp.router'
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if f'layers.0.{router}.' in n)


@pytest.mark.parametrize('family', MOE)
def test_lora_trains_attention_and_experts_and_leaves_the_router_frozen(tiny_checkpoint, family):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = InternVL_V1_5(tiny_checkpoint(family), torch_dtype='float32', freeze_visual_encoder=True,
                              llm_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0))
    assert not [str(w.message) for w in caught if 'did not match any targeted module' in str(w.message)]
    language = {n: p for n, p in model.named_parameters() if n.startswith('model.language_model.')}
    trained = {n for n, p in language.items() if p.requires_grad}
    assert trained and all('lora_' in n for n in trained)
    layer = {n.split('layers.0.')[1].split('.lora_')[0] for n in trained if 'layers.0.' in n}
    attention = {f'self_attn.{name}' for name in ('q_proj', 'k_proj', 'v_proj', 'o_proj')}
    fused = any(n.endswith('.gate_up_proj') for n in language)
    if fused:  # experts as 3-D parameters: one adapter per parameter (peft's target_parameters)
        assert layer == attention | {'mlp.experts', 'mlp.experts.base_layer'}
    else:  # Qwen3-MoE on transformers 4: an MLP per expert
        assert layer == attention | {f'mlp.experts.{e}.{p}' for e in range(4) for p in ('gate_proj', 'up_proj',
                                                                                         'down_proj')}
    assert not any('.gate.' in n or 'router' in n for n in trained)
    loss = model(image_batch(model))['loss']
    loss.backward()
    assert all(language[n].grad is not None for n in trained)


@pytest.mark.parametrize('family', MOE)
def test_checkpoints_keep_the_official_expert_layout(tiny_checkpoint, family):
    """Qwen3-MoE checkpoints hold one MLP per expert (as transformers 4 saved the released ones), whatever layout the
    installed transformers runs; GPT-OSS's hold each layer's experts as 3-D tensors."""
    keys = set(load_file(os.path.join(tiny_checkpoint(family), 'model.safetensors')))
    prefix = 'language_model.model.layers.0.mlp.'
    if family == 'qwen3_moe':
        assert {f'{prefix}experts.{e}.{p}.weight' for e in range(4) for p in ('gate_proj', 'up_proj', 'down_proj')} \
            <= keys and f'{prefix}gate.weight' in keys
        assert not any('gate_up_proj' in k for k in keys)
    else:
        assert {f'{prefix}experts.{name}' for name in ('gate_up_proj', 'gate_up_proj_bias', 'down_proj',
                                                       'down_proj_bias')} <= keys
        assert {f'{prefix}router.weight', 'language_model.model.layers.0.self_attn.sinks'} <= keys


@needs_gpt_oss
def test_lora_dropout_on_expert_parameters_is_refused_in_one_line(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"^llm_lora: lora_dropout is 0.05, but LoRA on the expert parameters "
                                         r"\['mlp.experts.gate_up_proj', 'mlp.experts.down_proj'\] \(peft "
                                         r"target_parameters\) takes no dropout; set lora_dropout=0.0"):
        InternVL_V1_5(tiny_checkpoint('gpt_oss'), torch_dtype='float32', llm_lora=dict(r=4, lora_alpha=8,
                                                                                        lora_dropout=0.05))


@needs_qwen3
def test_experts_as_linear_layers_compute_what_transformers_experts_compute(tiny_checkpoint):
    """transformers 5 holds Qwen3-MoE experts as 3-D tensors, which its grouped kernels run and 4-bit cannot hold;
    `expert_linears` makes them nn.Linear layers (transformers 4's own form) with the same results."""
    from internvl_plugin.model.modeling.moe import ExpertLinears
    path = tiny_checkpoint('qwen3_moe')
    fused = InternVL_V1_5(path, torch_dtype='float32', use_activation_checkpointing=False).eval()
    linears = InternVL_V1_5(path, torch_dtype='float32', use_activation_checkpointing=False, expert_linears=True)
    experts = linears.model.language_model.model.layers[0].mlp.experts
    assert isinstance(experts, (ExpertLinears, torch.nn.ModuleList))  # ModuleList: transformers 4 already
    assert sorted(n for n, _ in experts.named_parameters())[:3] == ['0.down_proj.weight', '0.gate_proj.weight',
                                                                   '0.up_proj.weight']
    batch = image_batch(fused)
    with torch.no_grad():
        assert torch.allclose(linears.eval()(batch, mode='predict'), fused(batch, mode='predict'), atol=1e-5)


@needs_qwen3
@needs_cpu_4bit
def test_qlora_holds_the_qwen3_moe_experts_in_4_bit_and_converts_with_them_merged(tiny_checkpoint, tmp_path):
    import bitsandbytes as bnb
    from test_convert import train_and_save, write_config

    from internvl_plugin.model.checkpoint.convert import convert_checkpoint
    base = tiny_checkpoint('qwen3_moe')
    lora = dict(r=8, lora_alpha=16, lora_dropout=0.05)   # per-expert modules take dropout
    model = InternVL_V1_5(base, torch_dtype='bfloat16', quantization_llm=True, freeze_visual_encoder=True,
                          use_activation_checkpointing=False, llm_lora=lora)
    quantized = {n.replace('.base_layer', '') for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    experts = {f'.layers.0.mlp.experts.{e}.{p}' for e in range(4) for p in ('gate_proj', 'up_proj', 'down_proj')}
    assert all(any(n.endswith(expert) for n in quantized) for expert in experts)
    assert any('experts.3.down_proj.lora_A' in n for n in model.state_dict())
    _, checkpoint = train_and_save(model, str(tmp_path), steps=2)
    config = write_config(str(tmp_path), base, quantization_llm=True, freeze_visual_encoder=True, llm_lora=repr(lora))
    out = str(tmp_path / 'converted')
    convert_checkpoint(config, checkpoint, out, dtype=torch.float32)
    key = 'language_model.model.layers.0.mlp.experts.0.gate_proj.weight'
    merged, before = (load_file(os.path.join(p, 'model.safetensors'))[key] for p in (out, base))
    assert merged.shape == before.shape and not torch.allclose(merged, before)  # the experts' LoRA went in
    assert InternVL_V1_5(out, torch_dtype='float32').model.router_aux_loss is not None
