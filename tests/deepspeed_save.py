"""Test harness: saves a real DeepSpeed checkpoint of a tiny LoRA model on CPU, one process.

    python tests/deepspeed_save.py STAGE BASE_CHECKPOINT OUT_DIR

Writes OUT_DIR/iter_1.pth (the DeepSpeed folder) and OUT_DIR/reference.pt (the trained state before DeepSpeed
partitions it). The CPU shims live here, in the harness, not in the product.
"""
import os
import sys

import torch

os.environ.update(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
                  MASTER_PORT=os.environ.get('MASTER_PORT', '29571'))
if not hasattr(torch.cpu, 'is_bf16_supported'):
    torch.cpu.is_bf16_supported = lambda: True

import deepspeed  # noqa: E402

from internvl_plugin import InternVL_V1_5  # noqa: E402

stage, base, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.manual_seed(0)
model = InternVL_V1_5(base, torch_dtype='float32', freeze_visual_encoder=True, use_activation_checkpointing=False,
                      llm_lora=dict(r=4, lora_alpha=8, lora_dropout=0.0))
for param in model.parameters():
    if param.requires_grad:
        param.data.add_(0.01)  # LoRA B starts at zero: make the merge visible
torch.save(model.state_dict(), os.path.join(out, 'reference.pt'))
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config={
    'train_micro_batch_size_per_gpu': 1, 'zero_optimization': {'stage': stage}, 'bf16': {'enabled': False}})
engine.save_checkpoint(os.path.join(out, 'iter_1.pth'))
