"""internvl_plugin_bridge: what it adds for xtuner 0.2.0 on transformers 5 / deepspeed >= 0.19.7, and that it adds
nothing where the names exist (the pinned and transformers4 worlds)."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.metadata import version

import pytest
from packaging.version import Version

TRANSFORMERS_5 = Version(version('transformers')) >= Version('5')
ONEBIT_REMOVED = Version(version('deepspeed')) >= Version('0.19.7')
# Python code that takes the bridge's hooks out of a fresh interpreter again.
WITHOUT_HOOKS = ('import sys\n'
                 "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__module__ != 'internvl_plugin_bridge']\n")
XTUNER_NEEDS = ['transformers.utils.is_safetensors_available', 'transformers.modeling_utils.no_init_weights']


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """A new interpreter of this environment, as `xtuner train` starts one (site-packages .pth files run)."""
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.abspath(__file__)))


def test_the_package_installs_the_start_up_hook():
    pth = os.path.join(sysconfig.get_paths()['purelib'], 'internvl_plugin_bridge.pth')
    with open(pth) as f:
        assert f.read().strip() == 'import internvl_plugin_bridge; internvl_plugin_bridge.install()'
    result = fresh_python('import sys; print(sorted(type(f).__name__ for f in sys.meta_path '
                          "if type(f).__module__ == 'internvl_plugin_bridge'))")
    assert result.stdout.strip() == "['_AfterImport', '_BeforeImport', '_OnebitFallback']", result.stderr
    # Start-up stays cheap: the hook imports neither torch nor transformers.
    result = fresh_python("import sys; print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert result.stdout.strip() == 'False False'


def names_transformers_lacks() -> list:
    """Asked in an interpreter without the bridge's hooks."""
    result = fresh_python(WITHOUT_HOOKS + 'import importlib\n'
                          'from internvl_plugin_bridge import TRANSFORMERS_NAMES\n'
                          "print([f'{m}.{n}' for m, n, _ in TRANSFORMERS_NAMES\n"
                          '       if not hasattr(importlib.import_module(m), n)])')
    assert result.returncode == 0, result.stderr[-2000:]
    return eval(result.stdout.strip().splitlines()[-1])


def test_xtuner_train_imports_and_the_bridge_adds_only_what_is_missing():
    result = fresh_python('import internvl_plugin_bridge as bridge, xtuner.tools.train, xtuner.model, '
                          'xtuner.engine.runner; print(bridge.applied)')
    assert result.returncode == 0, result.stderr[-2000:]
    applied = [name for name in eval(result.stdout.strip().splitlines()[-1]) if name.startswith('transformers.')]
    assert applied == names_transformers_lacks()
    if TRANSFORMERS_5:
        assert all(name in applied for name in XTUNER_NEEDS), applied
    if version('transformers') == '4.48.0':
        assert applied == []  # xtuner's own pins have every name: the bridge changes nothing there


def test_without_the_bridge_xtuner_fails_exactly_where_transformers_5_removed_names():
    result = fresh_python(WITHOUT_HOOKS + 'import xtuner.tools.train')
    if TRANSFORMERS_5:
        assert "cannot import name 'is_safetensors_available' from 'transformers.utils'" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-2000:]


def test_transformers_names_keep_their_meaning():
    result = fresh_python('import xtuner, transformers.utils as u, transformers.modeling_utils as m\n'
                          'print(u.is_safetensors_available(), u.is_torch_sdpa_available(), '
                          'u.is_torch_fx_available())\n'
                          'with m.no_init_weights():\n'
                          '    import torch; layer = torch.nn.Linear(2, 2)\n'
                          'print(type(layer).__name__)')
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ['True', 'True', 'True', 'Linear']


def test_mmengine_registers_deepspeed_optimizers_and_removed_ones_refuse_in_one_line():
    result = fresh_python('import internvl_plugin_bridge as bridge\n'
                          'from mmengine._strategy.deepspeed import register_deepspeed_optimizers\n'
                          'names = register_deepspeed_optimizers()\n'
                          'from deepspeed.runtime.fp16.onebit import OnebitAdam\n'
                          'print(sorted(names)); print(bridge.applied)\n'
                          'try:\n'
                          '    OnebitAdam([])\n'
                          'except Exception as error:\n'
                          '    print(type(error).__name__, error)')
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert eval(lines[-3]) == sorted(['DeepSpeedCPUAdam', 'FusedAdam', 'FusedLamb', 'OnebitAdam', 'OnebitLamb',
                                      'ZeroOneAdam'])
    served = 'deepspeed.runtime.fp16.onebit' in eval(lines[-2])
    assert served == ONEBIT_REMOVED
    if ONEBIT_REMOVED:
        assert lines[-1] == ('RuntimeError OnebitAdam was removed in deepspeed 0.19.7; install deepspeed<0.19.7 '
                             'to use it')


def test_xtuners_train_tool_reads_only_the_resume_checkpoint_in_full(tmp_path):
    """On torch >= 2.6 xtuner's seed read of the --resume file fails without the bridge (weights_only default)."""
    from mmengine.logging import HistoryBuffer
    import torch
    own = str(tmp_path / 'iter_5.pth')
    torch.save({'meta': {'seed': 1234}, 'message_hub': {'loss': HistoryBuffer([1.0], [1])}}, own)
    result = fresh_python('import internvl_plugin_bridge as bridge, xtuner.tools.train as train\n'
                          f"print(train.get_seed_from_checkpoint({own!r}), 'xtuner --resume reads' in bridge.applied)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == '1234 True'


def test_xtuner_called_by_path_runs_its_own_python_and_exits_with_the_status_of_a_failed_run(tmp_path):
    """xtuner's CLI starts `python train.py` from PATH and used to return 0 whatever became of it."""
    xtuner = os.path.join(os.path.dirname(sys.executable), 'xtuner')
    broken = tmp_path / 'broken.py'
    broken.write_text('model = dict(type=\n')
    # Not activated: this environment's bin is not on PATH (a `python` there, if any, is another one).
    env = dict(os.environ, PATH=os.pathsep.join(p for p in os.environ['PATH'].split(os.pathsep)
                                                if p != os.path.dirname(sys.executable)))
    failed = subprocess.run([xtuner, 'train', str(broken), '--work-dir', str(tmp_path / 'work')], env=env,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1, failed.stdout[-1000:] + failed.stderr[-2000:]
    assert 'SyntaxError' in failed.stderr
    listed = subprocess.run([xtuner, 'list-cfg', '-p', 'internvl_v2_internlm2_2b'], env=env, capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]


def test_bitsandbytes_imports_without_the_kernel_fetch_warning():
    result = fresh_python('import logging; logging.basicConfig(); import bitsandbytes, internvl_plugin_bridge as b; '
                          "print('quiet bitsandbytes kernel fetch' in b.applied)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == 'True'
    assert 'gemm_4bit_forward' not in result.stderr


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XTUNER = os.path.join(os.path.dirname(sys.executable), 'xtuner')


def test_every_xtuner_internvl_config_name_reaches_the_plugins_config():
    """`xtuner train NAME` as XTuner's guide says: its own InternVL names (v1_5, v2) are the plugin's configs now,
    and the plugin's names beyond them (v2_5, v3, ...) are found too."""
    result = fresh_python('import glob, json, os, xtuner.configs as configs\n'
                          "own = glob.glob(os.path.join(os.path.dirname(configs.__file__), 'internvl', '*', "
                          "'internvl_*.py'))\n"
                          'names = [os.path.basename(p)[:-3] for p in own]\n'
                          "names += ['internvl_v2_5_qwen2_5_0_5b_finetune', 'internvl_v3_5_qwen3_8b_lora_finetune']\n"
                          'print(json.dumps({n: configs.cfgs_name_path[n] for n in names}))')
    assert result.returncode == 0, result.stderr[-2000:]
    resolved = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(resolved) == 23  # XTuner 0.2.0 has 21 InternVL configs
    for name, path in resolved.items():
        assert path == os.path.join(REPO, 'configs', os.path.basename(os.path.dirname(path)), name + '.py')


def test_xtuners_internvl_names_are_refused_where_the_plugins_configs_are_not_found():
    """After a plain `pip install .` the configs folder is not beside the package: XTuner's own InternVL config
    must then not run in the plugin's place."""
    from internvl_plugin_bridge import ConfigNames
    xtuners = {'internvl_v2_internlm2_2b_finetune': '/x/configs/internvl/v2/internvl_v2_internlm2_2b_finetune.py',
               'llava_v15_7b_finetune': '/x/configs/llava/llava_v15_7b_finetune.py'}
    names = ConfigNames(xtuners, {})
    assert dict(names) == {'llava_v15_7b_finetune': xtuners['llava_v15_7b_finetune']}
    with pytest.raises(SystemExit) as refused:
        names['internvl_v2_internlm2_2b_finetune']
    assert str(refused.value) == (
        "xtuner: 'internvl_v2_internlm2_2b_finetune' names XTuner's own InternVL config, which does not use "
        "internvl_plugin, and the plugin's configs are not beside its installed package (install it with "
        '`pip install -e .` from a checkout, or give the config file)')
    ours = ConfigNames(xtuners, {'internvl_v2_internlm2_2b_finetune': '/repo/configs/v2/mine.py'})
    assert ours['internvl_v2_internlm2_2b_finetune'] == '/repo/configs/v2/mine.py'


def test_a_config_name_that_does_not_exist_is_one_line_with_the_close_names(tmp_path):
    result = subprocess.run([XTUNER, 'train', 'internvl_v2_5_qwen2_5_05b_finetune'], capture_output=True, text=True,
                            timeout=300, cwd=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "xtuner: 'internvl_v2_5_qwen2_5_05b_finetune' is neither a file nor a config name; did you mean "
        'internvl_v2_5_qwen2_5_0_5b_finetune or internvl_v2_5_qwen2_5_3b_finetune or '
        'internvl_v2_5_qwen2_5_72b_finetune? (`xtuner list-cfg -p internvl` lists the names)')


def test_a_config_copied_anywhere_reads_its_base_from_the_installed_package(tmp_path):
    """The shared schedule and runtime come from `internvl_plugin.config_base`, not a path beside the config; mmengine
    alone looks the package up through pkg_resources (gone in setuptools >= 81), which names site-packages for an
    editable install."""
    copy = tmp_path / 'my_cfg.py'
    shutil.copy(os.path.join(REPO, 'configs', 'v2_5', 'internvl_v2_5_qwen2_5_0_5b_lora_finetune.py'), copy)
    result = fresh_python('from mmengine.config import Config\n'
                          f'cfg = Config.fromfile({str(copy)!r})\n'
                          'print(cfg.default_hooks.checkpoint.interval, cfg.train_cfg.max_epochs, '
                          'cfg.model.llm_lora.r)')
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == '500 1 16'
