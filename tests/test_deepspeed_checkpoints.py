import os
import subprocess
import sys

import pytest
import torch
from test_convert import write_config

from internvl_plugin import InternVL_V1_5
from internvl_plugin.model.checkpoint.convert import convert_checkpoint
from internvl_plugin.model.checkpoint.trained import load_trained_state
from internvl_plugin_bridge import free_local_port

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'deepspeed_save.py')


@pytest.mark.parametrize('stage', [2, 3])
def test_real_deepspeed_checkpoints_convert(tiny_checkpoint, tmp_path, stage):
    base = tiny_checkpoint('qwen2')
    env = dict(os.environ, MASTER_PORT=str(free_local_port()))
    result = subprocess.run([sys.executable, HARNESS, str(stage), base, str(tmp_path)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / 'iter_1.pth'
    expected_file = 'mp_rank_00_model_states.pt' if stage == 2 else 'zero_pp_rank_0_mp_rank_00_model_states.pt'
    assert (folder / 'global_step0' / expected_file).exists()
    reference = torch.load(tmp_path / 'reference.pt')
    trained = load_trained_state(str(folder))
    assert trained.keys() == reference.keys()  # only what trains, also for ZeRO-3's reassembly
    assert all(torch.equal(trained[k].float(), reference[k].float()) for k in reference)

    config = write_config(str(tmp_path), base, freeze_visual_encoder=True,
                          llm_lora='dict(r=4, lora_alpha=8, lora_dropout=0.0)')
    out = str(tmp_path / 'converted')
    convert_checkpoint(config, str(folder), out, dtype=torch.float32)
    model = InternVL_V1_5(base, torch_dtype='float32', freeze_visual_encoder=True,
                          llm_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0), use_activation_checkpointing=False)
    model.load_state_dict(reference, strict=False)
    merged = model.merged_network().language_model.state_dict()
    converted = InternVL_V1_5(out, torch_dtype='float32').model.language_model.state_dict()
    layer = 'model.layers.0.self_attn.q_proj.weight'
    base_weight = InternVL_V1_5(base, torch_dtype='float32').model.language_model.state_dict()[layer]
    assert not torch.allclose(merged[layer], base_weight, atol=1e-4)  # the LoRA update is in the merged weight
    assert torch.allclose(converted[layer], merged[layer], atol=1e-6)
