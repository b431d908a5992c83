"""Runs the real `xtuner train` CLI on a config with a tiny checkpoint and tiny data (the test harness).

With the plugin's bridge a failed run exits non-zero (`xtuner_train` asserts 0); callers also check the files it
leaves in the work dir.
"""
import glob
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional

from internvl_plugin_bridge import free_local_port

SHIMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cpu_shims')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_options(model_path: str, meta_path: str, interval: int = 1000, batch_size: int = 2,
                 **extra: object) -> Dict[str, object]:
    """--cfg-options that point a config at a tiny checkpoint and data and make it run on a CPU."""
    options = {
        'model.model_path': model_path, 'train_dataloader.dataset.model_path': model_path,
        'train_dataloader.dataset.meta_path': meta_path, 'train_dataloader.num_workers': 0,
        'train_dataloader.batch_size': batch_size, 'train_dataloader.sampler.per_device_batch_size': batch_size,
        'optim_wrapper.accumulative_counts': 1, 'default_hooks.checkpoint.interval': interval,
        'default_hooks.logger.interval': 1, 'env_cfg.dist_cfg.backend': 'gloo',
    }
    options.update(extra)
    return options


def inside_packed_dataset(options: Dict[str, object]) -> Dict[str, object]:
    """`tiny_options` for a config whose dataset is wrapped in PackedDataset: the checkpoint and data go to the
    samples' dataset inside it."""
    for key in ('model_path', 'meta_path'):
        options[f'train_dataloader.dataset.dataset.{key}'] = options.pop(f'train_dataloader.dataset.{key}')
    return options


def xtuner_command(config: str, work_dir: str, options: Dict[str, object], deepspeed: Optional[str] = None,
                   resume: Optional[str] = None, seed: Optional[int] = 0) -> List[str]:
    """`config` is a path (relative ones from the repository) or a bare config name, given to xtuner as it is."""
    config = os.path.join(REPO, config) if os.sep in config else config
    command = [os.path.join(os.path.dirname(sys.executable), 'xtuner'), 'train', config,
               '--work-dir', work_dir, '--cfg-options'] + [f'{k}={v}' for k, v in options.items()]
    if deepspeed:
        command += ['--deepspeed', deepspeed]
    if resume:
        command += ['--resume', resume]
    if seed is not None:
        command += ['--seed', str(seed)]
    return command


def xtuner_env(processes: int = 1) -> Dict[str, str]:
    """PATH with this interpreter's bin first (xtuner starts `python` / `torchrun` from PATH), the CPU shims, and
    the rendezvous variables DeepSpeed wants even in one process (on a free port)."""
    port = free_local_port()  # fixed ports failed with EADDRINUSE when two worlds' runs ran side by side
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
               PYTHONPATH=SHIMS + os.pathsep + os.environ.get('PYTHONPATH', ''), MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(port), OMP_NUM_THREADS='2')
    if processes > 1:
        env['NPROC_PER_NODE'] = str(processes)
        env['PORT'] = str(port)
    else:
        env.update(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0')
    return env


def xtuner_train(config: str, work_dir: str, options: Dict[str, object], processes: int = 1, timeout: int = 600,
                 **kwargs) -> str:
    """Runs training to the end; returns its output."""
    result = subprocess.run(xtuner_command(config, work_dir, options, **kwargs), env=xtuner_env(processes),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def checkpoints(work_dir: str) -> List[str]:
    """iter_N.pth files or DeepSpeed folders, by iteration."""
    found = glob.glob(os.path.join(work_dir, 'iter_*.pth'))
    return sorted(found, key=lambda p: int(re.search(r'iter_(\d+)\.pth$', p).group(1)))


def saved_config(work_dir: str, config: str) -> str:
    """The config (a path or a name) with the overrides applied, as xtuner train saved it into the work dir."""
    name = os.path.basename(config)
    return os.path.join(work_dir, name if name.endswith('.py') else name + '.py')


def packed_config(config: str, out_path: str, max_packed_tokens: int, loss_reduction: str = 'square') -> str:
    """The shipped `config` with its dataset wrapped in PackedDataset, saved as a standalone config file."""
    from mmengine.config import Config
    from mmengine.config.lazy import LazyObject
    cfg = Config.fromfile(os.path.join(REPO, config))
    cfg.train_dataloader.dataset = dict(type=LazyObject('internvl_plugin', 'PackedDataset'),
                                        dataset=cfg.train_dataloader.dataset, max_packed_tokens=max_packed_tokens)
    cfg.model.loss_reduction = loss_reduction
    cfg.dump(out_path)
    return out_path
