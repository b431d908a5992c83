"""The settings at the top of a config (`path = ...`, `batch_size = ...`) and the places its text uses them.

MMEngine evaluates a config before it merges `--cfg-options`, so `path=X` changes the top-level `path` and nothing
that was built from it: the model and the dataset kept the hub id. `setting_overrides` reads the config's source
(and its `read_base()` files) for every value that names a setting, and recomputes those values from the merged
settings, so one override reaches each place the setting is used.
"""
import ast
import importlib.util
import os
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple


class SettingUse(NamedTuple):
    """`key` (a dotted --cfg-options key) holds `expression`, written in `file` in terms of settings."""
    key: str
    expression: ast.expr
    file: str


def _dotted(target: ast.expr) -> Optional[str]:
    """`a` or `a.b.c` as a key; None for anything else (subscripts, tuples)."""
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        owner = _dotted(target.value)
        return f'{owner}.{target.attr}' if owner else None
    return None


def _base_files(tree: ast.Module, config_file: str) -> List[str]:
    """The files of `with read_base(): from X import *`, found as mmengine finds them (relative to the config, or
    inside an installed package)."""
    files = []
    for node in tree.body:
        if not isinstance(node, ast.With):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.ImportFrom):
                continue
            parts = (statement.module or '').split('.')
            if statement.level:
                folder = os.path.join(os.path.dirname(config_file), *(['..'] * (statement.level - 1)))
            else:
                spec = importlib.util.find_spec(parts[0])
                if spec is None or not spec.submodule_search_locations:
                    continue
                folder, parts = list(spec.submodule_search_locations)[0], parts[1:]
            files.append(os.path.join(folder, *parts) + '.py')
    return files


def _assignments(tree: ast.Module) -> List[tuple]:
    """(key, value) of each top-level assignment, `a = b = v` and `a, b = v1, v2` included."""
    pairs = []
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple) \
                    and len(target.elts) == len(node.value.elts):
                pairs += [(_dotted(t), v) for t, v in zip(target.elts, node.value.elts)]
            else:
                pairs.append((_dotted(target), node.value))
    return [(key, value) for key, value in pairs if key]


def _uses_in(key: str, value: ast.expr, settings: set, file: str) -> List[SettingUse]:
    """The values under `key` whose expression names a setting: `dict(...)`, `{...}` and lists are walked into."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == 'dict':
        return [use for keyword in value.keywords if keyword.arg
                for use in _uses_in(f'{key}.{keyword.arg}', keyword.value, settings, file)]
    if isinstance(value, ast.Dict):
        return [use for name, item in zip(value.keys, value.values)
                if isinstance(name, ast.Constant) and isinstance(name.value, str)
                for use in _uses_in(f'{key}.{name.value}', item, settings, file)]
    if isinstance(value, (ast.List, ast.Tuple)):
        return [use for index, item in enumerate(value.elts)
                for use in _uses_in(f'{key}.{index}', item, settings, file)]
    names = {node.id for node in ast.walk(value) if isinstance(node, ast.Name)}
    return [SettingUse(key, value, file)] if names & settings else []


def _settings_and_uses(config_file: str) -> Tuple[set, List[SettingUse]]:
    """The names the config (and its base files) assigns at the top, and the values computed from them."""
    with open(config_file, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=config_file)
    settings, uses = set(), []
    for base in _base_files(tree, config_file):
        if os.path.isfile(base):
            base_settings, base_uses = _settings_and_uses(base)
            settings |= base_settings
            uses += base_uses
    assignments = _assignments(tree)
    settings |= {key for key, _ in assignments if '.' not in key}
    return settings, uses + [use for key, value in assignments for use in _uses_in(key, value, settings, config_file)]


def setting_uses(config_file: str) -> List[SettingUse]:
    """Every value of the config (its base files first, in the order they run) that is computed from a setting."""
    return _settings_and_uses(config_file)[1]


def _names(expression: ast.expr) -> set:
    return {node.id for node in ast.walk(expression) if isinstance(node, ast.Name)}


def setting_overrides(config_file: str, options: Mapping[str, object],
                      values: Mapping[str, object]) -> Dict[str, object]:
    """The keys to set besides `options` so that each overridden setting reaches the values computed from it.

    `values` holds the settings after `options` were merged. A key given in `options` keeps its given value. A
    value whose expression cannot be computed from settings alone raises one line naming the key to set as well.
    The expressions are the config's own code, which loading the config has run already.
    """
    changed = {key for key in options if '.' not in key}
    namespace = dict(values)
    extra: Dict[str, object] = {}
    for use in setting_uses(config_file):
        if use.key in options or not _names(use.expression) & changed:
            continue
        try:
            value = eval(compile(ast.Expression(use.expression), use.file, 'eval'), {}, namespace)
        except Exception as error:  # noqa: BLE001 - any failure means the expression needs more than settings
            setting = ', '.join(sorted(_names(use.expression) & changed))
            raise ValueError(f'--cfg-options {setting}: {use.key} is `{ast.unparse(use.expression)}` in {use.file}, '
                             f'which cannot be computed again here ({error}); set {use.key} as well') from None
        extra[use.key] = value
        if '.' not in use.key:  # a setting derived from another: what uses it changes too
            namespace[use.key] = value
            changed.add(use.key)
    return extra
