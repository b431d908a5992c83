# What every InternVL fine-tune config shares: the official schedule (1 epoch, 3 % linear warmup, then cosine to 0),
# checkpointing and the MMEngine runtime. A config imports it first and may override any of it afterwards, e.g.
# `default_hooks.checkpoint.interval = 1000`.
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, ParamSchedulerHook
from mmengine.visualization import LocalVisBackend, Visualizer
from xtuner.engine.runner import TrainLoop

from internvl_plugin import CosineLR, ProgressLoggerHook, WarmupLR

#######################################################################
#                          Schedule                                   #
#######################################################################
max_epochs = 1
warmup_ratio = 0.03
save_steps = 500                # a checkpoint (with optimizer state, for --resume) every this many iterations
save_total_limit = 2            # keep the newest two: the older one survives a crash while the next is written

param_scheduler = [
    dict(type=WarmupLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                          Runtime                                    #
#######################################################################
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=ProgressLoggerHook, log_metric_by_epoch=False, interval=10),  # every iteration of short runs
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit,
                    save_optimizer=True, save_param_scheduler=True),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
# loss, lr and grad_norm of each logged iteration -> WORK_DIR/<timestamp>/vis_data/scalars.json, drawn by
# tools/plot_curves.py; for TensorBoard add dict(type=TensorboardVisBackend) (needs `pip install tensorboard`).
visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend)])
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
