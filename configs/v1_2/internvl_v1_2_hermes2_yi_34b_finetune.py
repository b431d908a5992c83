# InternVL-Chat-V1-2 reproduction: a new model assembled from InternViT-6B-448px-V1-2 and Nous-Hermes-2-Yi-34B
# with a freshly initialised MLP projector, trained on the 1.2M-sample fine-tune set (ViT frozen; MLP + LLM train).
# Recipe: 64 GPUs x 4 samples x 2 accumulation steps = global batch 512, lr 1e-5, 1 epoch, max length 2048,
# weight decay 0.05, one 448 px tile per image (no dynamic resolution yet), pixel shuffle v1, DeepSpeed ZeRO-3:
#   NNODES=8 NODE_RANK=<0..7> ADDR=<first node> PORT=29500 NPROC_PER_NODE=8 \
#     xtuner train configs/v1_2/internvl_v1_2_hermes2_yi_34b_finetune.py --deepspeed deepspeed_zero3
# On 32 GPUs set accumulative_counts = 4.
from mmengine.config import read_base
from mmengine.optim import OptimWrapper
from xtuner.dataset.samplers import LengthGroupedSampler

from internvl_plugin import InternVL_V1_5, InternVL_V1_5_Dataset, InternVLAdamW, internvl_collate_fn

with read_base():
    from internvl_plugin.config_base.schedule_runtime import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model: the two parts (local folders or hub ids)
vision_path = 'OpenGVLab/InternViT-6B-448px-V1-2'
llm_path = 'NousResearch/Nous-Hermes-2-Yi-34B'
template = 'Hermes-2'

# Data: the meta JSON of the official 1.2M-sample SFT set (README, "Data")
meta_path = 'data/internvl_1_2_finetune.json'
max_length = 2048

# Optimisation
batch_size = 4                     # per GPU
accumulative_counts = 2            # 64 GPUs x 4 x 2 = 512
dataloader_num_workers = 4
lr = 1e-5
vit_lr = mlp_lr = llm_lr = None    # a part's own learning rate (None: lr); set freeze_* below to train it
weight_decay = 0.05                # not on biases and norm weights, as the official Trainer
max_norm = 1.0

#######################################################################
#                          PART 2  Model                              #
#######################################################################
model = dict(
    type=InternVL_V1_5,
    vision_model_path=vision_path,
    llm_path=llm_path,
    template=template,
    ps_version='v1',
    downsample_ratio=0.5,
    select_layer=-1,
    freeze_visual_encoder=True,
    freeze_mlp=False,
    freeze_llm=False,
    use_activation_checkpointing=True,
    torch_dtype='bfloat16',
)

#######################################################################
#                          PART 3  Data                               #
#######################################################################
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    # The LLM's tokenizer with the InternVL special tokens added (as the model adds them).
    dataset=dict(type=InternVL_V1_5_Dataset, tokenizer=llm_path, template=template, meta_path=meta_path,
                 max_length=max_length, image_size=448, downsample_ratio=0.5, dynamic_image_size=False,
                 use_thumbnail=False, length_workers=dataloader_num_workers),
    sampler=dict(type=LengthGroupedSampler, length_property='modality_length',
                 per_device_batch_size=batch_size * accumulative_counts),
    collate_fn=dict(type=internvl_collate_fn),
)

#######################################################################
#                          PART 4  Optimizer                          #
#######################################################################
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=InternVLAdamW, lr=lr, vit_lr=vit_lr, mlp_lr=mlp_lr, llm_lr=llm_lr, betas=(0.9, 0.999),
                   weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
)
