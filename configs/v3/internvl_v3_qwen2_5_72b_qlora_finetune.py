# InternVL3-78B (InternViT-6B-448px-V2_5 + Qwen2.5-72B):
# QLoRA: the LLM in 4-bit NF4 with LoRA (rank 16, alpha 32), ViT and MLP frozen, on ONE GPU.
# 1 GPU x 1 sample x 16 accumulation steps = global batch 16 (as the 2-GPU LoRA runs),
# DeepSpeed ZeRO-2 for bf16 mixed precision (one process; ZeRO-3 cannot shard 4-bit weights):
#   xtuner train configs/v3/internvl_v3_qwen2_5_72b_qlora_finetune.py --deepspeed deepspeed_zero2
# Will the default batch fit on 80 GB (tools/estimate_memory.py, worst case)?
#   No: about 87 GiB; max_length = 12288 fits (or the LoRA
#   config on more GPUs).
from mmengine.config import read_base
from mmengine.optim import OptimWrapper
from xtuner.dataset.samplers import LengthGroupedSampler

from internvl_plugin import InternVL_V1_5, InternVL_V1_5_Dataset, InternVLAdamW, internvl_collate_fn

with read_base():
    from internvl_plugin.config_base.schedule_runtime import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
path = 'OpenGVLab/InternVL3-78B'   # a local folder or a hub id
template = None                    # None: the checkpoint's own (internvl2_5)

# Data: an InternVL meta JSON (README, "Data"); or data_paths=[...] + image_folders=[...] in the dataset below
meta_path = 'data/meta.json'
max_length = 16384
max_dynamic_patch = 12

# Optimisation
batch_size = 1                     # per GPU
accumulative_counts = 16           # 1 GPU x 1 x 16 = 16
dataloader_num_workers = 4
lr = 2e-5
weight_decay = 0.05                # not on biases and norm weights, as the official Trainer
max_norm = 1.0
lora_r, lora_alpha = 16, 32

#######################################################################
#                          PART 2  Model                              #
#######################################################################
model = dict(
    type=InternVL_V1_5,
    model_path=path,
    freeze_visual_encoder=True,
    freeze_mlp=True,
    quantization_llm=True,              # NF4 with double quantisation, bf16 compute
    llm_lora=dict(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.05),  # the official targets of the LLM family
    use_activation_checkpointing=True,
    torch_dtype='bfloat16',
)

#######################################################################
#                          PART 3  Data                               #
#######################################################################
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=dict(type=InternVL_V1_5_Dataset, model_path=path, template=template, meta_path=meta_path,
                 max_length=max_length, max_dynamic_patch=max_dynamic_patch,
                 length_workers=dataloader_num_workers),
    sampler=dict(type=LengthGroupedSampler, length_property='modality_length',
                 per_device_batch_size=batch_size * accumulative_counts),
    collate_fn=dict(type=internvl_collate_fn),
)

#######################################################################
#                          PART 4  Optimizer                          #
#######################################################################
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=InternVLAdamW, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
)
