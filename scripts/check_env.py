"""Checks that the running Python environment holds exactly the versions of a lock file.

    python scripts/check_env.py locks/newest.txt

Prints one line and exits 0 when every locked package is installed at its locked version; otherwise exits 1 with
one line naming the first difference (the packages README's version table promises come first) and how many more
there are, e.g. `locks/newest.txt: torch expected 2.15.0, found 2.14.1 (and 2 more: nvidia-nccl-cu13, triton)`.
Standard library only: it runs before anything is trusted.
"""
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Dict, List, Tuple

# The versions README's table and the issue promise per world; checked (and reported) first.
PROMISED = ['torch', 'torchvision', 'transformers', 'mmengine', 'xtuner', 'peft', 'bitsandbytes', 'deepspeed',
            'accelerate']
_LINE = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*(?:#.*)?$')


def canonical(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def read_lock(path: str) -> Dict[str, str]:
    """`name==version` lines (comments and blank lines allowed); anything else is an error naming the line."""
    locked = {}
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            match = _LINE.match(line)
            if not match:
                raise ValueError(f"{path}:{number}: expected 'name==version', got '{line}'")
            locked[canonical(match.group(1))] = match.group(2)
    return locked


def differences(path: str) -> List[Tuple[str, str]]:
    """(package, 'package expected X, found Y') for each locked package not installed at its version."""
    locked = read_lock(path)
    order = [name for name in PROMISED if name in locked] + sorted(set(locked) - set(PROMISED))
    found = []
    for name in order:
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != locked[name]:
            found.append((name, f'{name} expected {locked[name]}, found {installed or "not installed"}'))
    return found


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print('usage: check_env.py LOCK_FILE', file=sys.stderr)
        return 2
    try:
        problems = differences(argv[0])
    except (OSError, ValueError) as error:
        print(f'check_env.py: {error}', file=sys.stderr)
        return 2
    if problems:
        more = problems[1:]
        rest = f" (and {len(more)} more: {', '.join(name for name, _ in more[:8])}{', ...' if len(more) > 8 else ''})"
        print(f'{argv[0]}: {problems[0][1]}{rest if more else ""}', file=sys.stderr)
        return 1
    locked = read_lock(argv[0])
    promised = ', '.join(f'{name} {locked[name]}' for name in PROMISED if name in locked)
    print(f'{argv[0]}: all {len(locked)} locked versions installed ({promised})')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
