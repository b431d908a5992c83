"""CPU shims for running `xtuner train --deepspeed` on a machine without a GPU (test harness only).

Put on PYTHONPATH by tests/xtuner_cli.py, so they are active in every process `xtuner train` starts, before the
runner: the product never needs them on GPUs.
"""
import torch

if not hasattr(torch.cpu, 'is_bf16_supported'):  # DeepSpeed's CPU accelerator asks; torch >= 2.6 dropped it
    torch.cpu.is_bf16_supported = lambda: True
if not torch.cuda.is_available():
    torch.cuda.set_device = lambda device: None  # mmengine calls it per rank when it starts a distributed run
