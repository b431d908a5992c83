import torch

from internvl_plugin.model.checkpoint.key_maps import (internlm2_to_llama, llama_to_internlm2, network_to_hf,
                                                       network_to_official, official_to_network)
from internvl_plugin.model.checkpoint.load import load_weights, read_internvl_config
from internvl_plugin.model.modeling.llm import build_llm_config


def internlm2_layer(hidden=32, heads=8, kv_heads=2, head_dim=4):
    wqkv = torch.randn((heads + 2 * kv_heads) * head_dim, hidden)
    return {
        'model.tok_embeddings.weight': torch.randn(50, hidden),
        'model.layers.0.attention.wqkv.weight': wqkv,
        'model.layers.0.attention.wo.weight': torch.randn(hidden, heads * head_dim),
        'model.layers.0.feed_forward.w1.weight': torch.randn(64, hidden),
        'model.layers.0.feed_forward.w3.weight': torch.randn(64, hidden),
        'model.layers.0.feed_forward.w2.weight': torch.randn(hidden, 64),
        'model.layers.0.attention_norm.weight': torch.randn(hidden),
        'model.layers.0.ffn_norm.weight': torch.randn(hidden),
        'model.norm.weight': torch.randn(hidden),
        'output.weight': torch.randn(50, hidden),
    }


def test_internlm2_gqa_round_trip_is_bit_exact():
    official = internlm2_layer(heads=8, kv_heads=2)
    llama = internlm2_to_llama(official, 8, 2)
    assert llama['model.layers.0.self_attn.q_proj.weight'].shape == (32, 32)
    assert llama['model.layers.0.self_attn.k_proj.weight'].shape == (8, 32)
    assert llama['model.layers.0.mlp.gate_proj.weight'] is official['model.layers.0.feed_forward.w1.weight']
    assert llama['lm_head.weight'] is official['output.weight']
    back = llama_to_internlm2(llama, 8, 2)
    assert back.keys() == official.keys()
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_wqkv_rows_are_grouped_query_heads_then_key_then_value():
    heads, kv_heads, head_dim, hidden = 4, 2, 2, 3
    # Row r of wqkv holds the value r in every column, so each split row says where it came from.
    wqkv = torch.arange((heads + 2 * kv_heads) * head_dim, dtype=torch.float).unsqueeze(1).repeat(1, hidden)
    llama = internlm2_to_llama({'model.layers.3.attention.wqkv.weight': wqkv}, heads, kv_heads)
    q = llama['model.layers.3.self_attn.q_proj.weight'][:, 0].tolist()
    k = llama['model.layers.3.self_attn.k_proj.weight'][:, 0].tolist()
    v = llama['model.layers.3.self_attn.v_proj.weight'][:, 0].tolist()
    # Each KV group spans (2 query heads + key + value) * head_dim = 8 rows; query heads 2-3 start at row 8.
    assert q == [0, 1, 2, 3, 8, 9, 10, 11]
    assert k == [4, 5, 12, 13] and v == [6, 7, 14, 15]


def test_official_checkpoint_round_trips_through_the_network_names(tiny_checkpoint):
    path = tiny_checkpoint('internlm2', '6b')
    official = load_weights(path)
    llm_config = read_internvl_config(path)['llm_config']
    heads, kv = llm_config['num_attention_heads'], llm_config['num_key_value_heads']
    assert kv < heads  # the tiny InternLM2 uses grouped-query attention
    network = official_to_network(official, 'internlm2', heads, kv)
    assert 'language_model.model.layers.0.self_attn.q_proj.weight' in network
    assert not any('wqkv' in k for k in network)
    back = network_to_official(network, 'internlm2', heads, kv)
    assert back.keys() == official.keys()
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_hf_keys_are_distinct_and_cover_every_tensor(tiny_checkpoint):
    weights = load_weights(tiny_checkpoint('qwen2', '6b'))
    hf = network_to_hf(weights, 'qwen2')
    qkv = [k for k in weights if k.endswith('attn.qkv.weight')]
    assert len(hf) == len(weights) + 2 * len(qkv)  # each fused qkv became three tensors
    assert 'model.vision_tower.encoder.layer.0.attention.q_proj.weight' in hf
    assert 'model.vision_tower.encoder.layer.0.attention.q_norm.weight' in hf
    assert 'model.multi_modal_projector.linear_2.weight' in hf
    assert 'lm_head.weight' in hf and 'model.language_model.embed_tokens.weight' in hf
    total = sum(t.numel() for t in weights.values())
    assert sum(t.numel() for t in hf.values()) == total


def test_internlm2_config_becomes_llama_with_the_same_shapes(tiny_checkpoint):
    llm_config = read_internvl_config(tiny_checkpoint('internlm2'))['llm_config']
    llama = build_llm_config(llm_config)
    assert llama.model_type == 'llama' and llama.architectures == ['LlamaForCausalLM']
    assert llama.num_key_value_heads == llm_config['num_key_value_heads']
    assert llama.attention_bias is False and llama.rms_norm_eps == llm_config['rms_norm_eps']
    assert llama.rope_scaling['rope_type'] == 'dynamic' and llama.rope_scaling['factor'] == 2.0
