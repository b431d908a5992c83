# InternVL3_5-38B (InternViT-6B-448px-V2_5 + Qwen3-32B):
# QLoRA: the LLM in 4-bit NF4 with LoRA (rank 16, alpha 32), ViT and MLP frozen, on ONE GPU.
# 1 GPU x 2 samples x 8 accumulation steps = global batch 16 (as the 2-GPU LoRA runs),
# DeepSpeed ZeRO-2 for bf16 mixed precision (one process; ZeRO-3 cannot shard 4-bit weights):
#   xtuner train configs/v3_5/internvl_v3_5_qwen3_32b_qlora_finetune.py --deepspeed deepspeed_zero2
# Will the default batch fit on 80 GB (tools/estimate_memory.py, worst case)?
#   Yes: about 74.9 GiB of 80; batch_size = 1 with
#   accumulative_counts = 16 (the same global batch) leaves more room.
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
path = 'OpenGVLab/InternVL3_5-38B' # a local folder or a hub id
template = None                    # None: the checkpoint's own (internvl2_5)

# Data: an InternVL meta JSON (README, "Data"); or data_paths=[...] + image_folders=[...] in the dataset below
meta_path = 'data/meta.json'
max_length = 16384
max_dynamic_patch = 12

# Optimisation
batch_size = 2                     # per GPU
accumulative_counts = 8            # 1 GPU x 2 x 8 = 16
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
    loss_reduction='square',           # each sample weighs 1/sqrt(its supervised tokens), as official
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
