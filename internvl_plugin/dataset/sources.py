"""Where samples come from: the official meta JSON, XTuner's data_paths lists, json/jsonl files, repeat factors.

Every problem is reported as `file:line: what is wrong`; a JSON list (LLaVA style) reports the line each
record starts on.
"""
import json
import math
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..files import read_json


class DataError(ValueError):
    """Training data that cannot be used as written; the message says where and why."""


@dataclass
class DataSource:
    """One annotation file and the settings that apply to its samples (None: the dataset's own)."""
    name: str
    annotation: str
    root: str
    repeat_time: float = 1.0
    data_augment: Optional[bool] = None
    max_dynamic_patch: Optional[int] = None
    min_dynamic_patch: Optional[int] = None
    use_thumbnail: Optional[bool] = None


def _resolve(path: str, base_dir: str) -> str:
    """A relative path as the official scripts take it (from the working directory), else from `base_dir`."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(base_dir, path)


_META_KEYS = {'root', 'annotation', 'repeat_time', 'data_augment', 'max_dynamic_patch', 'min_dynamic_patch',
              'use_thumbnail', 'length'}
_WHOLE_SETTINGS = ('max_dynamic_patch', 'min_dynamic_patch')
_SWITCHES = ('data_augment', 'use_thumbnail', 'dynamic_image_size')
# More copies than this of one annotation file is a typo (1e12), not a recipe: the index would not fit in memory.
MAX_REPEAT_TIME = 1000


def check_setting(where: str, key: str, value: object) -> None:
    """Tiling and augmentation settings as the official code reads them: counts are whole numbers >= 1, switches
    true or false (a string such as "false" would be truthy)."""
    if value is None:
        return
    if key in _WHOLE_SETTINGS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(f'{where}: {key} is {value!r}; expected a whole number >= 1')
    if key in _SWITCHES and not isinstance(value, bool):
        raise DataError(f'{where}: {key} is {value!r}; expected true or false')


def check_repeat(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_REPEAT_TIME:
        raise DataError(f'{where} is {value!r}; expected a number from 0 to {MAX_REPEAT_TIME}')
    return float(value)


def read_meta(meta_path: str) -> List[DataSource]:
    """InternVL's meta JSON: {name: {root, annotation, repeat_time, data_augment, max_dynamic_patch, length}}."""
    try:
        meta = read_json(meta_path)
    except (FileNotFoundError, ValueError) as error:
        raise DataError(str(error)) from None
    if not isinstance(meta, dict) or not meta:
        raise DataError(f'{meta_path}: expected an object {{"name": {{"root": ..., "annotation": ...}}}}')
    base = os.path.dirname(os.path.abspath(meta_path))
    sources = []
    for name, entry in meta.items():
        where = f"{meta_path}: dataset '{name}'"
        if isinstance(entry, dict) and 'annotaion' in entry and 'annotation' not in entry:
            raise DataError(f'{where}: "annotaion" is a misspelling of "annotation"; rename the key')
        if not isinstance(entry, dict) or 'annotation' not in entry:
            raise DataError(f'{where}: expected an object with at least "annotation" (and usually "root")')
        unknown = sorted(set(entry) - _META_KEYS)
        if unknown:
            raise DataError(f'{where}: unknown key(s) {unknown}; expected some of {sorted(_META_KEYS)}')
        repeat = check_repeat(f'{where}: repeat_time', entry.get('repeat_time', 1))
        for key in _WHOLE_SETTINGS + _SWITCHES:
            check_setting(where, key, entry.get(key))
        annotation = _resolve(entry['annotation'], base)
        root = _resolve(entry['root'], base) if 'root' in entry else os.path.dirname(os.path.abspath(annotation))
        sources.append(DataSource(
            name=name, annotation=annotation, root=root,
            repeat_time=repeat, data_augment=entry.get('data_augment'),
            max_dynamic_patch=entry.get('max_dynamic_patch'), min_dynamic_patch=entry.get('min_dynamic_patch'),
            use_thumbnail=entry.get('use_thumbnail')))
    return sources


def _per_file(value, n: int, what: str) -> list:
    if not isinstance(value, (list, tuple)):
        return [value] * n
    if len(value) != n:
        raise DataError(f'{what} has {len(value)} entries for {n} data_paths; give one per file (or a single value)')
    return list(value)


def xtuner_sources(data_paths: Union[str, Sequence[str]], image_folders: Union[None, str, Sequence] = None,
                   repeat_times: Union[float, Sequence[float]] = 1) -> List[DataSource]:
    """XTuner's form: parallel lists of files, image folders (None: the file's folder) and repeat factors."""
    paths = [data_paths] if isinstance(data_paths, str) else list(data_paths)
    folders = _per_file(image_folders, len(paths), 'image_folders')
    repeats = _per_file(repeat_times, len(paths), 'repeat_times')
    sources = []
    for path, folder, repeat in zip(paths, folders, repeats):
        repeat = check_repeat(f'repeat_times for {path}', repeat)
        root = folder if folder is not None else os.path.dirname(os.path.abspath(path))
        sources.append(DataSource(name=os.path.basename(path), annotation=path, root=root, repeat_time=repeat))
    return sources


def read_annotation(path: str) -> Iterator[Tuple[int, str]]:
    """(line number, JSON text) per sample of a .jsonl file, or of a .json file holding a list of samples."""
    if not os.path.isfile(path):
        raise DataError(f'{path}: annotation file does not exist')
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        line = raw.count(b'\n', 0, error.start) + 1
        column = error.start - (raw.rfind(b'\n', 0, error.start) + 1) + 1
        raise DataError(f'{path}:{line}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {column}); save the '
                        'file as UTF-8') from None
    if not path.lower().endswith('.json'):
        for number, line in enumerate(text.split('\n'), start=1):  # not splitlines: JSON may hold U+2028
            if line.strip():
                yield number, line
        return
    yield from _json_list_records(path, text)


def _json_list_records(path: str, text: str) -> Iterator[Tuple[int, str]]:
    decoder = json.JSONDecoder()
    position = len(text) - len(text.lstrip())
    if not text.startswith('[', position):
        raise DataError(f'{path}:{text.count(chr(10), 0, position) + 1}: expected a JSON list of samples')
    position += 1
    line, counted = 1, 0
    while True:
        while position < len(text) and text[position] in ' \t\r\n,':
            position += 1
        if position >= len(text):
            raise DataError(f'{path}: the JSON list is not closed with ]')
        if text[position] == ']':
            rest = text[position + 1:]
            if rest.strip():
                after = position + 1 + len(rest) - len(rest.lstrip())
                raise DataError(f"{path}:{text.count(chr(10), 0, after) + 1}: text after the JSON list's closing ]; "
                                'expected one list of samples (or write JSONL: one sample per line)')
            return
        line += text.count('\n', counted, position)
        counted = position
        try:
            _, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(f'{path}:{error.lineno}: invalid JSON ({error.msg})') from None
        yield line, text[position:end]
        position = end


def repeat_indices(n: int, repeat_time: float, seed: int) -> np.ndarray:
    """Indices 0..n-1 repeated `repeat_time` times; the fraction picks floor(f * n + 0.5) distinct samples by a
    seeded shuffle. So 3.5 is every sample 3 times plus a fixed half once more, and 0.5 a fixed half."""
    whole = int(math.floor(repeat_time))
    extra = int(math.floor((repeat_time - whole) * n + 0.5))
    chosen = np.sort(np.random.default_rng(seed).permutation(n)[:extra])
    return np.concatenate([np.tile(np.arange(n), whole), chosen]).astype(np.int64)


class LineStore:
    """Many JSON lines in one byte buffer: cheap to hold and to share with forked dataloader workers."""

    def __init__(self, lines: Sequence[str]):
        encoded = [line.encode('utf-8') for line in lines]
        self._offsets = np.cumsum([0] + [len(b) for b in encoded]).astype(np.int64)
        self._buffer = np.frombuffer(b''.join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        return self._buffer[self._offsets[index]:self._offsets[index + 1]].tobytes().decode('utf-8')
