"""`--resume` on torch >= 2.6, which made `weights_only=True` torch.load's default.

mmengine's checkpoints hold training state (history buffers with bound methods, numpy values) that weights_only
refuses, and allow-listing it would need `builtins.getattr`, which reopens the sandbox. So only the reads of the
checkpoint a run resumes from unpickle fully: xtuner's seed read of the `--resume` file and `Runner.resume` /
`FlexibleRunner.resume` (DeepSpeed) of it (or of the newest checkpoint in the work dir). Every other torch.load
keeps torch's default. `internvl_plugin_bridge` applies `trust_resume_reads` when xtuner's train tool loads its
helpers, so it holds for every config, the one xtuner saves into the work dir included.
"""
import functools
import os
from typing import Any, Callable, ContextManager, Dict

from .model.checkpoint.safe_pickle import torch_load_arguments

_MARK = '__internvl_trusts_its_checkpoint__'


def trusting(checkpoint: str) -> ContextManager[None]:
    """Within the block, torch.load reads `checkpoint` (a file, or a DeepSpeed folder and what it holds) with
    weights_only=False; any other path keeps torch's default."""
    trusted = os.path.realpath(checkpoint)

    def adjust(f: Any, kwargs: Dict[str, Any]) -> None:
        if isinstance(f, (str, os.PathLike)):
            path = os.path.realpath(f)
            if path == trusted or path.startswith(trusted + os.sep):
                kwargs['weights_only'] = False

    return torch_load_arguments(adjust)


def trusting_its_path(read: Callable, position: int, name: str) -> Callable:
    """`read` with `trusting(path)` around each call, the path being argument `position` (or keyword `name`);
    marked, so wrapping twice does nothing."""
    if getattr(read, _MARK, False):
        return read

    @functools.wraps(read)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with trusting(args[position] if len(args) > position else kwargs[name]):
            return read(*args, **kwargs)
    setattr(wrapper, _MARK, True)
    return wrapper


def trust_resume_reads(xtuner_tool_utils: Any) -> None:
    """Wraps xtuner's `get_seed_from_checkpoint(pth_model)` (in the module given) and both runners'
    `resume(self, filename, ...)`."""
    from mmengine.runner import FlexibleRunner, Runner
    xtuner_tool_utils.get_seed_from_checkpoint = trusting_its_path(
        xtuner_tool_utils.get_seed_from_checkpoint, 0, 'pth_model')
    for runner_class in (Runner, FlexibleRunner):
        runner_class.resume = trusting_its_path(runner_class.resume, 1, 'filename')
