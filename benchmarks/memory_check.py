"""The memory estimate beside the real peak of the same step: a size's v2_5 config, no DeepSpeed, one GPU.

    python benchmarks/memory_check.py --size 1b|2b|8b|26b|tiny --mode full|lora|qlora [--device cuda]

The config's model at the size's released shapes (internvl_plugin.tiny.shapes, random init), its optimizer and
clipping, and the worst-case batch of tools/estimate_memory.py (the config's batch size x max_length tokens,
max_dynamic_patch tiles and the thumbnail each), measured as a step after the first. Prints the estimate (the step
under fake tensors on the CPU), the peak the storage tracker counts on the real tensors and, on a GPU,
torch.cuda.max_memory_allocated of that step, with the estimate's ratio to it. `--size tiny` runs on a CPU.
"""
import argparse
import os
import tempfile

import torch
from train_step import MODE_SUFFIXES, SIZE_RECIPES, recipe_model, recipe_path

from internvl_plugin.memory.estimate import GIB, ConfigModel, estimate_config
from internvl_plugin.memory.step import measure_step
from internvl_plugin.tiny import write_shape_checkpoint


def real_peaks(config_path: str, shape_dir: str, device: torch.device, workload) -> tuple:
    """(tracked bytes, device max_memory_allocated or None) of the same step on real tensors."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(config_path)
    model = recipe_model(cfg.model, shape_dir, device, 'sdpa')
    statistics = [t for p in model.parameters() if getattr(p, 'quant_state', None) is not None
                  for t in (p.quant_state.absmax, p.quant_state.code, p.quant_state.state2.absmax,
                            p.quant_state.state2.code)]
    batch = workload.batch(model)
    cuda = device.type == 'cuda'
    reset = (lambda: torch.cuda.reset_peak_memory_stats(device)) if cuda else None
    step = measure_step(None, model, build_optim_wrapper(model, cfg.optim_wrapper), batch,
                        workload.accumulative_counts, statistics, on_start=reset)
    return sum(step.peak.values()), torch.cuda.max_memory_allocated(device) if cuda else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--size', choices=sorted(SIZE_RECIPES), required=True)
    parser.add_argument('--mode', choices=sorted(MODE_SUFFIXES), default='full')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    config_path = recipe_path(args.size, args.mode)
    with tempfile.TemporaryDirectory() as folder:
        shape_dir = os.path.join(folder, args.size)
        write_shape_checkpoint(shape_dir, args.size)
        model = ConfigModel(config_path, shape_dir)
        estimate = estimate_config(config_path, gpus=1, deepspeed='none', model=model)
        model.close()
        tracked, allocated = real_peaks(config_path, shape_dir, torch.device(args.device), estimate.workload)
    line = (f'{args.size} {args.mode} ({estimate.workload.describe()}): estimate {estimate.total / GIB:.2f} GiB '
            f'in {estimate.step.seconds:.1f} s, tracked on real tensors {tracked / GIB:.2f} GiB')
    if allocated is not None:
        line += (f', torch.cuda.max_memory_allocated {allocated / GIB:.2f} GiB, '
                 f'estimate / allocated {estimate.total / allocated:.3f}')
    else:
        line += f', estimate / tracked {estimate.total / tracked:.3f}'
    print(line)


if __name__ == '__main__':
    main()
