"""What xtuner 0.2.0 and mmengine 0.10 need that transformers 5, deepspeed >= 0.19.7 and torch >= 2.6 took away.

xtuner gets no more releases, so `xtuner train` cannot import its own tools on transformers 5. The package installs
`internvl_plugin_bridge.pth`, which runs `install()` when any Python of the environment starts; that only adds
three finders to `sys.meta_path` (standard library only, no import of torch or transformers). They act:

- when `xtuner` is first imported, before any of its code runs: each name of `TRANSFORMERS_NAMES` that the
  installed transformers lacks is added (on xtuner's own pin, 4.48, every name is there and nothing is added);
- when `bitsandbytes` is first imported: its warning that the hub's CPU 4-bit kernel could not be fetched (printed
  by every command on an AVX-512 CPU, with or without the `kernels` package; bitsandbytes' own kernel runs) is left
  out;
- when `deepspeed.runtime.fp16.onebit` (the 1-bit optimizers, removed in deepspeed 0.19.7) is imported and
  deepspeed has no such module, it serves one whose optimizers refuse to be built with a line saying why: mmengine's
  DeepSpeed strategy imports them to register their names, and no InternVL recipe uses them;
- when xtuner's train tool loads its helpers (`xtuner.tools.utils`), the plugin's changes to the tool apply
  (`internvl_plugin.train_tool`: `--cfg-options` settings reach their uses, the data is built before the model);
  the reads of the `--resume` checkpoint (xtuner's seed read, the runners' resume) unpickle mmengine's training
  state, which torch >= 2.6's weights_only default refuses; every other torch.load keeps that default
  (`internvl_plugin.resume`). It adds the bf16 question xtuner asks `torch.cpu` on a machine without CUDA (gone
  in torch >= 2.6), and a one-process `--deepspeed` run started without a launcher gets the rendezvous variables
  of a one-process group (DeepSpeed would look for MPI instead);
- when xtuner's command line (`xtuner.entry_point`) loads: the commands it starts (train.py, torchrun) run with
  this environment's Python, and one that fails makes `xtuner` exit with its status; xtuner ignores it and exits
  0 after a crashed run;
- when `xtuner.configs` loads: the plugin's configs join xtuner's config names (`xtuner train NAME`, `copy-cfg`),
  taking the names they share with XTuner's own InternVL configs;
- when `mmengine.config.config` loads: `read_base()` of an installed package's module (the configs' shared
  `internvl_plugin.config_base`) reads the file Python imports, where mmengine needs pkg_resources (gone in
  setuptools >= 81) and names site-packages for an editable install.

`applied` lists what was added, so tests and `python -m internvl_plugin_bridge` can show it.
"""
import glob
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

ONEBIT_MODULE = 'deepspeed.runtime.fp16.onebit'
ONEBIT_OPTIMIZERS = ('OnebitAdam', 'OnebitLamb', 'ZeroOneAdam')


def _always_available() -> bool:
    return True


def _no_init_weights() -> object:
    return importlib.import_module('transformers.initialization').no_init_weights


def _loss_kwargs() -> object:
    return importlib.import_module('transformers.utils.generic').TransformersKwargs


# (module, name, what transformers 5 has instead). safetensors, torch.fx and SDPA are always there on the torch
# versions transformers 5 supports, so the removed availability checks answer True; no_init_weights moved to
# transformers.initialization; LossKwargs (a TypedDict of loss arguments) became part of TransformersKwargs.
TRANSFORMERS_NAMES: List[Tuple[str, str, Callable[[], object]]] = [
    ('transformers.utils', 'is_safetensors_available', lambda: _always_available),
    ('transformers.utils.import_utils', 'is_safetensors_available', lambda: _always_available),
    ('transformers.utils', 'is_torch_fx_available', lambda: _always_available),
    ('transformers.utils.import_utils', 'is_torch_fx_available', lambda: _always_available),
    ('transformers.utils', 'is_torch_sdpa_available', lambda: _always_available),
    ('transformers.utils.import_utils', 'is_torch_sdpa_available', lambda: _always_available),
    ('transformers.modeling_utils', 'no_init_weights', _no_init_weights),
    ('transformers.utils', 'LossKwargs', _loss_kwargs),
]

applied: List[str] = []


def add_missing_transformers_names() -> List[str]:
    """Adds the names transformers lacks; returns them as 'module.name'."""
    added = []
    if importlib.util.find_spec('transformers') is None:
        return added
    for module_name, name, replacement in TRANSFORMERS_NAMES:
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            setattr(module, name, replacement())
            added.append(f'{module_name}.{name}')
    applied.extend(added)
    return added


def _removed_optimizer(name: str) -> type:
    def refuse(self, *args, **kwargs):
        raise RuntimeError(f'{name} was removed in deepspeed 0.19.7; install deepspeed<0.19.7 to use it')
    return type(name, (), {'__init__': refuse, '__module__': ONEBIT_MODULE})


class _OnebitLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        for name in ONEBIT_OPTIMIZERS:
            setattr(module, name, _removed_optimizer(name))
        applied.append(ONEBIT_MODULE)


# bitsandbytes >= 0.49 on an AVX-512 CPU tries to fetch a faster 4-bit kernel from the hub with the `kernels`
# package, and logs a warning in every process when it cannot (no package, offline, or kernels 0.19 refusing the
# repository as unverified, which also means no code is fetched); its own CPU kernel runs.
BITSANDBYTES_KERNEL_FETCH = ('bitsandbytes.backends.cpu.ops',
                             'Failed to load CPU gemm_4bit_forward from kernels-community')


def _quiet_bitsandbytes_kernel_fetch() -> None:
    logger_name, message = BITSANDBYTES_KERNEL_FETCH
    logging = importlib.import_module('logging')
    logging.getLogger(logger_name).addFilter(lambda record: not str(record.msg).startswith(message))
    applied.append('quiet bitsandbytes kernel fetch')


# Module -> what to do before it is first imported.
BEFORE_IMPORT = {'xtuner': add_missing_transformers_names, 'bitsandbytes': _quiet_bitsandbytes_kernel_fetch}


class _BeforeImport(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: runs the action of BEFORE_IMPORT the first time its module is looked up, before any
    finder loads it; it finds nothing itself."""

    def __init__(self) -> None:
        self.done: set = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname in BEFORE_IMPORT and fullname not in self.done:
            self.done.add(fullname)
            BEFORE_IMPORT[fullname]()
        return None


def _train_tool_helpers(module) -> None:
    """xtuner.tools.utils: the --resume reads; the plugin's train-tool changes; `torch.cpu.is_bf16_supported`,
    gone in torch >= 2.6, which xtuner asks for a DeepSpeed config on a machine without CUDA (True, as DeepSpeed's
    CPU accelerator says); and the rendezvous of a one-process run."""
    importlib.import_module('internvl_plugin.resume').trust_resume_reads(module)
    applied.append('xtuner --resume reads')
    importlib.import_module('internvl_plugin.train_tool').apply()
    applied.append('settings reach their uses, data before the model')
    torch = importlib.import_module('torch')
    if not hasattr(torch.cpu, 'is_bf16_supported'):
        torch.cpu.is_bf16_supported = lambda: True
        applied.append('torch.cpu.is_bf16_supported')
    _single_process_rendezvous()


SINGLE_PROCESS_ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def free_local_port() -> int:
    """A local port nothing listens on now, for a rendezvous (also the tests' xtuner runs)."""
    with importlib.import_module('socket').socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def _single_process_rendezvous() -> None:
    """`xtuner train --deepspeed` in one process (one GPU, as the QLoRA configs run) starts no launcher, and
    DeepSpeed then looks for MPI and stops with `No module named 'mpi4py'` (xtuner issue 592). With no launcher's
    variables set, the train tool gets those of a one-process group: rank 0 of 1 on a free local port."""
    os = importlib.import_module('os')
    if '--deepspeed' not in sys.argv or 'SLURM_PROCID' in os.environ or any(
            name in os.environ for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')):
        return
    defaults = {'RANK': '0', 'WORLD_SIZE': '1', 'LOCAL_RANK': '0', 'MASTER_ADDR': '127.0.0.1',
                'MASTER_PORT': str(free_local_port())}
    for name in SINGLE_PROCESS_ENV:
        os.environ.setdefault(name, defaults[name])
    applied.append('one-process rendezvous')


class _FailingRunExits:
    """`subprocess` as xtuner's CLI sees it. The command it starts (`python .../train.py`, `torchrun ...`) runs
    with this environment's interpreter and torchrun, not whichever `python` comes first on PATH (xtuner called by
    its path from an environment that is not activated started another Python); and when that command fails, the
    CLI exits with its status instead of returning 0, so a crashed run reads as failed in shells and CI."""

    def __getattr__(self, name: str):
        return getattr(importlib.import_module('subprocess'), name)

    @staticmethod
    def run(command, *args, **kwargs):
        os = importlib.import_module('os')
        own = {'python': sys.executable, 'torchrun': os.path.join(os.path.dirname(sys.executable), 'torchrun')}
        if isinstance(command, list) and command and os.path.isfile(own.get(command[0], '')):
            command = [own[command[0]]] + command[1:]
        result = importlib.import_module('subprocess').run(command, *args, **kwargs)
        if result.returncode:
            sys.exit(result.returncode)
        return result


def _exit_with_the_run(module) -> None:
    module.subprocess = _FailingRunExits()
    applied.append("xtuner's exit status")


def _package_folder(package: str) -> Optional[str]:
    """The folder Python imports `package` from; None when there is no such package."""
    spec = importlib.util.find_spec(package)
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None


def _installed_path(package: str) -> str:
    """mmengine's `get_installed_path`, answered with the folder Python imports `package` from. mmengine asks the
    distribution's metadata through pkg_resources, which setuptools >= 81 no longer ships, and which names
    site-packages, not the source folder, for an editable install: `read_base()` of an installed config module
    (`internvl_plugin.config_base...`) failed either way."""
    folder = _package_folder(package)
    if folder is None:
        raise ModuleNotFoundError(f'no package {package!r} to read a base config from (is it installed?)')
    return folder


def _config_reads_imported_packages(module) -> None:
    module.get_installed_path = _installed_path
    applied.append('read_base() from installed packages')


def plugin_configs() -> Dict[str, str]:
    """Config name -> file of every config the plugin ships (`configs/*/internvl_*.py` beside the package: a source
    checkout, installed with `pip install -e .`)."""
    package = _package_folder('internvl_plugin')
    if package is None:
        return {}
    pattern = os.path.join(os.path.dirname(package), 'configs', '*', 'internvl_*.py')
    return {os.path.basename(path)[:-3]: path for path in sorted(glob.glob(pattern))}


class ConfigNames(dict):
    """xtuner's config names (`xtuner train NAME`, `copy-cfg`, `list-cfg`) with the plugin's configs taking the
    names they share: each XTuner InternVL config name is also one of the plugin's, whose config is the one that
    runs. XTuner's own InternVL configs are never reached by name (where the plugin's configs are not found, as
    after a plain `pip install .`, their names are refused); a name that is neither a file nor a config stops with
    one line instead of xtuner's traceback."""

    def __init__(self, xtuner_names: Dict[str, str], plugin_names: Dict[str, str]) -> None:
        xtuners_internvl = {name for name, path in xtuner_names.items()
                            if name.startswith('internvl_') and f'{os.sep}internvl{os.sep}' in path}
        self.refused = xtuners_internvl - set(plugin_names)
        super().__init__({name: path for name, path in {**xtuner_names, **plugin_names}.items()
                          if name not in self.refused})

    def __missing__(self, name: str) -> str:
        if name in self.refused:
            raise SystemExit(f"xtuner: {name!r} names XTuner's own InternVL config, which does not use "
                             "internvl_plugin, and the plugin's configs are not beside its installed package "
                             '(install it with `pip install -e .` from a checkout, or give the config file)')
        close = importlib.import_module('difflib').get_close_matches(name, list(self), n=3, cutoff=0.8)
        hint = f'; did you mean {" or ".join(close)}?' if close else ''
        raise SystemExit(f'xtuner: {name!r} is neither a file nor a config name{hint} '
                         f'(`xtuner list-cfg -p internvl` lists the names)')


def _plugin_config_names(module) -> None:
    module.cfgs_name_path = ConfigNames(module.cfgs_name_path, plugin_configs())
    applied.append('plugin config names')


# Module -> what to do to it right after it has run.
AFTER_IMPORT = {'xtuner.tools.utils': _train_tool_helpers, 'xtuner.entry_point': _exit_with_the_run,
                'mmengine.config.config': _config_reads_imported_packages, 'xtuner.configs': _plugin_config_names}


class _AfterImport(importlib.abc.MetaPathFinder):
    """First on sys.meta_path: finds the modules of AFTER_IMPORT as the path finder would, and has their loader
    run the patch after the module's own code."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in AFTER_IMPORT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or not hasattr(spec.loader, 'exec_module'):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module) -> None:
            run_module(module)
            AFTER_IMPORT[fullname](module)

        spec.loader.exec_module = exec_module
        return spec


class _OnebitFallback(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: asked for the 1-bit module only when deepspeed itself has none."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == ONEBIT_MODULE:
            return importlib.machinery.ModuleSpec(fullname, _OnebitLoader())
        return None


def install() -> None:
    """Called from the .pth file at start-up; cheap and idempotent."""
    if any(isinstance(finder, _OnebitFallback) for finder in sys.meta_path):
        return
    sys.meta_path[:0] = [_BeforeImport(), _AfterImport()]
    sys.meta_path.append(_OnebitFallback())


if __name__ == '__main__':  # python -m internvl_plugin_bridge: what the bridge adds in this environment
    bridge = importlib.import_module('internvl_plugin_bridge')  # the copy the .pth file installed, not __main__
    importlib.import_module('xtuner')
    importlib.import_module('mmengine._strategy.deepspeed').register_deepspeed_optimizers()
    print('internvl_plugin_bridge added:', ', '.join(bridge.applied) or 'nothing (every name is there)')
