"""The locked worlds: lock files, the environment check, make_env.sh's refusals, README's version table."""
import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

from xtuner_cli import REPO

LOCKS = os.path.join(REPO, 'locks')
WORLDS = ['pinned', 'transformers4', 'newest']
CHECK_ENV = os.path.join(REPO, 'scripts', 'check_env.py')
PROMISED = ['torch', 'torchvision', 'transformers', 'mmengine', 'xtuner', 'peft', 'bitsandbytes', 'deepspeed',
            'accelerate']


def lock_versions(world: str) -> dict:
    with open(os.path.join(LOCKS, f'{world}.txt'), encoding='utf-8') as f:
        pairs = [line.strip().split('==') for line in f if '==' in line and not line.startswith('#')]
    return {name.lower().replace('_', '-'): value for name, value in pairs}


def check_env(lock: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, CHECK_ENV, lock], capture_output=True, text=True, timeout=60)


def write_lock(path, versions: dict) -> str:
    path.write_text('# a lock\n' + ''.join(f'{name}=={value}\n' for name, value in versions.items()))
    return str(path)


@pytest.mark.parametrize('world', WORLDS)
def test_each_world_locks_every_promised_package_exactly(world):
    locked = lock_versions(world)
    assert all(name in locked for name in PROMISED), sorted(set(PROMISED) - set(locked))
    assert 'internvl-plugin' not in locked and 'pip' not in locked


def test_the_pinned_world_is_torch_2_5_again():
    locked = lock_versions('pinned')
    assert (locked['torch'], locked['torchvision'], locked['transformers']) == ('2.5.1', '0.20.1', '4.48.0')
    assert locked['bitsandbytes'] == '0.45.0' and locked['deepspeed'] == '0.16.2'
    assert int(locked['accelerate'].split('.')[1]) < 16  # accelerate 1.16 requires torch >= 2.6


def test_the_newest_world_is_the_current_stack():
    locked = lock_versions('newest')
    assert locked['torch'] == '2.15.0' and locked['transformers'].startswith('5.')


def test_this_environment_equals_its_lock():
    """make_env.sh records the world it built; the environment the tests run in must be that lock, exactly."""
    marker = os.path.join(sys.prefix, 'internvl-world')
    if not os.path.isfile(marker):
        pytest.skip('not an environment made by scripts/make_env.sh')
    with open(marker) as f:
        world = f.read().strip()
    result = check_env(os.path.join(LOCKS, f'{world}.txt'))
    assert result.returncode == 0, result.stderr
    assert f'torch {version("torch")}' in result.stdout


def test_check_env_fails_in_one_line_when_torch_differs_from_the_lock(tmp_path):
    installed = {name: version(name) for name in PROMISED}
    assert check_env(write_lock(tmp_path / 'same.txt', installed)).returncode == 0
    other = '2.5.1' if installed['torch'] != '2.5.1' else '2.15.0'
    lock = write_lock(tmp_path / 'other.txt', dict(installed, torch=other))
    result = check_env(lock)
    assert result.returncode == 1
    assert result.stderr.strip() == f'{lock}: torch expected {other}, found {installed["torch"]}'


def test_check_env_names_missing_packages_and_bad_lines(tmp_path):
    lock = write_lock(tmp_path / 'lock.txt', {'torch': version('torch'), 'no-such-package-here': '1.0'})
    result = check_env(lock)
    assert result.returncode == 1
    assert result.stderr.strip() == f'{lock}: no-such-package-here expected 1.0, found not installed'
    bad = tmp_path / 'bad.txt'
    bad.write_text('torch==2.5.1\ntorch>=2\n')
    result = check_env(str(bad))
    assert result.returncode == 2 and f"{bad}:2: expected 'name==version', got 'torch>=2'" in result.stderr


def make_env(world: str, venv: str, locks: str) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', os.path.join(REPO, 'scripts', 'make_env.sh'), world, venv],
                          env=dict(os.environ, INTERNVL_LOCKS=locks), capture_output=True, text=True, timeout=300)


def test_make_env_names_the_package_the_registry_lacks(tmp_path):
    locks = tmp_path / 'locks'
    locks.mkdir()
    write_lock(locks / 'broken.txt', {'six': '0.0.0'})
    result = make_env('broken', str(tmp_path / 'venv'), str(locks))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"make_env.sh: world 'broken' cannot be built: six==0.0.0 (from {locks}/broken.txt) "
        'is not on the package registry')


def test_make_env_never_deletes_a_folder_it_did_not_make(tmp_path):
    venv = tmp_path / 'mine'
    venv.mkdir()
    (venv / 'precious.txt').write_text('keep me')
    result = make_env('pinned', str(venv), LOCKS)
    assert result.returncode == 2
    assert 'exists and was not made by make_env.sh' in result.stderr
    assert (venv / 'precious.txt').read_text() == 'keep me'


def test_make_env_refuses_a_disk_without_room_before_it_creates_anything(tmp_path):
    venv = tmp_path / 'venvs' / 'pinned'
    result = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'make_env.sh'), 'pinned', str(venv)],
                            env=dict(os.environ, INTERNVL_BUILD_GB='1000000000'), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert re.fullmatch(rf"make_env.sh: world 'pinned' needs about 1000000000 GB free beside {venv}, which has \d+ GB",
                        result.stderr.strip())
    assert not venv.exists()


def test_the_test_command_checks_room_for_all_its_builds_first(tmp_path):
    venvs = tmp_path / 'venvs'
    result = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'test.sh')], capture_output=True, text=True,
                            env=dict(os.environ, INTERNVL_VENVS=str(venvs), INTERNVL_BUILD_GB='1000000000'),
                            timeout=60)
    assert result.returncode == 1
    assert re.fullmatch(rf'test.sh: building 3 environments needs about 3000000000 GB free under {venvs}/, which has '
                        r'\d+ GB; free some space or set INTERNVL_VENVS to a folder on a larger disk',
                        result.stderr.strip())
    assert os.listdir(venvs) == []


def test_make_env_refuses_an_unknown_world(tmp_path):
    result = make_env('nightly', str(tmp_path / 'venv'), LOCKS)
    assert result.returncode == 2 and "no lock file" in result.stderr and "'nightly'" in result.stderr


def test_readme_version_table_is_the_locks():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    rows = {m.group(1): m.group(0) for m in re.finditer(r'^\| (pinned|transformers4|newest) \|.*$', readme, re.M)}
    assert sorted(rows) == sorted(WORLDS)
    for world in WORLDS:
        locked = lock_versions(world)
        for name in PROMISED:
            assert locked[name] in rows[world], f'README row {world}: {name} {locked[name]} missing'
