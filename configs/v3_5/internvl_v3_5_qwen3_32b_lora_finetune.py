# InternVL3_5-38B (InternViT-6B-448px-V2_5 + Qwen3-32B):
# LoRA (rank 16, alpha 32) on the LLM, ViT and MLP frozen (the official LoRA recipe of 2.5;
# InternVL3_5 ships no LoRA script).
# Official recipe: 2 GPUs x 2 samples x 4 accumulation steps = global batch 16, DeepSpeed ZeRO-3:
#   NPROC_PER_NODE=2 xtuner train configs/v3_5/internvl_v3_5_qwen3_32b_lora_finetune.py \
#     --deepspeed deepspeed_zero3
# With fewer GPUs raise accumulative_counts, so that the global batch (and so the lr) stays as it is.
# Will the default batch fit on 80 GB (tools/estimate_memory.py, worst case)?
#   No: about 83 GiB per GPU; batch_size = 1 with
#   accumulative_counts = 8 (the same global batch) fits.
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
accumulative_counts = 4            # 2 GPUs x 2 x 4 = 16
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
