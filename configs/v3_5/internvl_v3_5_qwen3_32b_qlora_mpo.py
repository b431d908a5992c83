# InternVL3_5-38B (InternViT-6B-448px-V2_5 + Qwen3-32B):
# MPO (mixed preference optimisation) with QLoRA: the LLM in 4-bit NF4 with LoRA (rank 16, alpha 32), ViT
# and MLP frozen, on ONE GPU; the reference model is the same network with its adapters disabled.
# The official loss, beta and global batch; the lr is 10x the official full-MPO lr (our choice, as the
# LoRA config). 1 GPU x 1 pair x 256 accumulation steps = global batch 256, DeepSpeed ZeRO-2 for bf16
# mixed precision (one process; ZeRO-3 cannot shard 4-bit weights):
#   xtuner train configs/v3_5/internvl_v3_5_qwen3_32b_qlora_mpo.py --deepspeed deepspeed_zero2
# Will the default batch fit on 80 GB (tools/estimate_memory.py, worst case)?
#   Yes: about 75.8 GiB of 80 (activations of 2 x 16384 tokens take 45.4).
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
path = 'OpenGVLab/InternVL3_5-38B' # a local folder or a hub id
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
accumulative_counts = 256          # 1 GPU x 1 x 256 = 256
dataloader_num_workers = 4
lr = 2e-6
weight_decay = 0.05                # not on biases and norm weights, as the official Trainer
max_norm = 1.0
lora_r, lora_alpha = 16, 32

#######################################################################
#                          PART 2  Model                              #
#######################################################################
model = dict(
    type=InternVLPreference,
    model_path=path,
    freeze_visual_encoder=True,
    freeze_mlp=True,
    quantization_llm=True,              # NF4 with double quantisation, bf16 compute
    llm_lora=dict(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.05),  # the official targets of the LLM family
    reference='adapters',              # the network with its adapters disabled
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
