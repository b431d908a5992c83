# InternVL3_5-8B (InternViT-300M-448px-V2_5 + Qwen3-8B):
# MPO (mixed preference optimisation), full: ViT, MLP projector and LLM all train, as the official InternVL3.5
# MPO recipe (sigmoid DPO x 0.8 + BCO-pair x 0.2 + SFT on the chosen answer x 1, beta 0.1, 1 epoch; it starts
# from the -Instruct (SFT) checkpoint: set path to it or to your own SFT result). The reference model is a
# frozen copy of the initial model: one more bf16 copy of the weights (2 bytes per parameter), no gradients.
# Official: global batch 256, DeepSpeed ZeRO-3; the same global batch here with
# 8 GPUs x 1 pair x 32 accumulation steps:
#   NPROC_PER_NODE=8 xtuner train configs/v3_5/internvl_v3_5_qwen3_8b_mpo.py \
#     --deepspeed deepspeed_zero3
# With fewer GPUs raise accumulative_counts, so that the global batch (and so the lr) stays as it is.
# Data: the official MMPR format, a meta JSON whose JSONL lines hold question / chosen / rejected
# (README, "Preference training (MPO / DPO)").
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper

from internvl_plugin import InternVLAdamW, InternVLPreference, PreferenceDataset, preference_collate_fn

with read_base():
    from internvl_plugin.config_base.schedule_runtime import *  # noqa: F401,F403

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# Model
path = 'OpenGVLab/InternVL3_5-8B'  # a local folder or a hub id
template = None                    # None: the checkpoint's own (internvl2_5)

# Data: an InternVL meta JSON of preference pairs; or data_paths=[...] + image_folders=[...] below
meta_path = 'data/mmpr/meta.json'
max_length = 16384                 # prompt + each answer (the official max_seq_length)
max_dynamic_patch = 12
pack_pairs = True                  # chosen and rejected of a pair in one row, attending apart

# Preference loss (MPO)
beta = 0.1
loss_weights = dict(sigmoid=0.8, bco_pair=0.2, sft=1.0)

# Optimisation
batch_size = 1                     # pairs per GPU
accumulative_counts = 32           # 8 GPUs x 1 x 32 = 256
dataloader_num_workers = 4
lr = 2e-7
weight_decay = 0.05                # not on biases and norm weights, as the official Trainer
max_norm = 1.0
drop_path_rate = 0.1               # ViT stochastic depth in training (the official MPO value)

#######################################################################
#                          PART 2  Model                              #
#######################################################################
model = dict(
    type=InternVLPreference,
    model_path=path,
    freeze_visual_encoder=False,
    freeze_mlp=False,
    freeze_llm=False,
    drop_path_rate=drop_path_rate,
    reference='copy',                  # a frozen copy of the initial model
    beta=beta,
    loss_weights=loss_weights,
    use_activation_checkpointing=True,
    torch_dtype='bfloat16',
)

#######################################################################
#                          PART 3  Data                               #
#######################################################################
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=dict(type=PreferenceDataset, model_path=path, template=template, meta_path=meta_path,
                 max_length=max_length, max_dynamic_patch=max_dynamic_patch,
                 length_workers=dataloader_num_workers),
    sampler=dict(type=DefaultSampler, shuffle=True),  # the official MPO runs do not group by length
    collate_fn=dict(type=preference_collate_fn, pack_pairs=pack_pairs),
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
