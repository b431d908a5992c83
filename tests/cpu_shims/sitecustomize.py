"""A CPU shim for running `xtuner train` in several processes on a machine without a GPU (test harness only).

Put on PYTHONPATH by tests/xtuner_cli.py, so it is active in every process `xtuner train` starts, before the
runner: the product never needs it on GPUs, and one process needs nothing (the bridge answers xtuner's bf16
question and gives a launcher-less DeepSpeed run its one-process group).
"""
import torch

if not torch.cuda.is_available():
    torch.cuda.set_device = lambda device: None  # mmengine calls it per rank when it starts a distributed run
