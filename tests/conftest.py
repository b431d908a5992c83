import importlib.util
import os

import pytest
import torch
from packaging.version import Version

from internvl_plugin.tiny import build_tiny_checkpoint


def _version(name: str) -> Version:
    from importlib.metadata import version
    return Version(version(name))


# bitsandbytes has CPU 4-bit kernels from 0.46 on; transformers quantises with them from 4.53 on.
HAS_CPU_4BIT = _version('bitsandbytes') >= Version('0.46') and _version('transformers') >= Version('4.53')
HAS_NATIVE_INTERNVL = _version('transformers') >= Version('4.52')
HAS_QWEN3 = _version('transformers') >= Version('4.51')  # Qwen3 and Qwen3-MoE
HAS_GPT_OSS = _version('transformers') >= Version('4.55')
# TRL is a test oracle for the preference losses; the pinned world (transformers 4.48) does not lock it.
HAS_TRL = importlib.util.find_spec('trl') is not None
needs_trl = pytest.mark.skipif(not HAS_TRL, reason='trl (the DPO oracle) is locked in the newest and transformers4 worlds')
needs_cpu_4bit = pytest.mark.skipif(not HAS_CPU_4BIT, reason='CPU 4-bit needs bitsandbytes >= 0.46, transformers >= 4.53')
needs_native_internvl = pytest.mark.skipif(not HAS_NATIVE_INTERNVL, reason='native InternVL needs transformers >= 4.52')

needs_qwen3 = pytest.mark.skipif(not HAS_QWEN3, reason='Qwen3 needs transformers >= 4.51')
needs_gpt_oss = pytest.mark.skipif(not HAS_GPT_OSS, reason='GPT-OSS needs transformers >= 4.55')

FAMILIES = ['qwen2', pytest.param('qwen3', marks=needs_qwen3), pytest.param('qwen3_moe', marks=needs_qwen3),
            pytest.param('gpt_oss', marks=needs_gpt_oss), 'internlm2', 'phi3', 'llama']


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(llm, vit) -> path of a cached tiny official-layout checkpoint (fp32)."""
    cache = {}

    def get(llm: str = 'qwen2', vit: str = '300m') -> str:
        if (llm, vit) not in cache:
            path = str(tmp_path_factory.mktemp('ckpt') / f'tiny-{llm}-{vit}')
            build_tiny_checkpoint(path, llm=llm, vit=vit)
            cache[llm, vit] = path
        return cache[llm, vit]

    return get


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_environment():
    """What a test sets in os.environ stays in that test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """INTERNVL_NO_SKIP=1 (the newest-versions CI run) turns any skipped test into a failed run."""
    skipped = terminalreporter.stats.get('skipped', [])
    if os.environ.get('INTERNVL_NO_SKIP') == '1' and skipped:
        terminalreporter.write_line(f'INTERNVL_NO_SKIP=1 but {len(skipped)} tests were skipped', red=True)
        terminalreporter._session.exitstatus = 1
