"""Validate training data without training: counts, tiles, token-length percentiles, and every problem."""
import json
import os
import random
import re
import stat
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from ..files import train_dataset_config
from .internvl_dataset import InternVL_V1_5_Dataset, SampleDropped
from .preference_dataset import PreferenceDataset
from .samples import Sample, SampleError
from .sources import DataError, read_annotation

PERCENTILES = (50, 90, 99)


@dataclass
class SourceReport:
    name: str
    annotation: str
    samples: int = 0
    kinds: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    images: int = 0
    videos: int = 0
    tiles: int = 0
    text: List[int] = field(default_factory=list)
    image: List[int] = field(default_factory=list)
    total: List[int] = field(default_factory=list)
    lengths: Dict[int, int] = field(default_factory=dict)   # annotation line -> total tokens
    length_for: str = ''                                    # the settings those counts hold for


@dataclass
class DataReport:
    sources: List[SourceReport]
    problems: List[str]
    max_length: int
    over_length: int = 0
    over_length_videos: int = 0
    dropped: int = 0


DATASET_CLASSES = {cls.__name__: cls for cls in (InternVL_V1_5_Dataset, PreferenceDataset)}


def dataset_kwargs(inputs: List[str], overrides: Dict[str, Any], preference: bool = False) -> Dict[str, Any]:
    """The dataset's arguments, its class under `type`: a training config's own, or from a meta JSON and/or
    json/jsonl files (PreferenceDataset when `preference`, else InternVL_V1_5_Dataset)."""
    if len(inputs) == 1 and inputs[0].endswith('.py'):
        from mmengine.config import Config
        dataset = train_dataset_config(Config.fromfile(inputs[0]))
        if not dataset:
            raise ValueError(f'{inputs[0]}: no train_dataloader.dataset to check')
        kind = dataset.get('type', InternVL_V1_5_Dataset)
        name = getattr(kind, '__name__', str(kind).rsplit('.', 1)[-1])
        if name not in DATASET_CLASSES:
            raise ValueError(f'{inputs[0]}: train_dataloader.dataset is a {name}; expected one of '
                             f"{', '.join(DATASET_CLASSES)}")
        kwargs = dict(dataset, type=DATASET_CLASSES[name])
    else:
        metas = [path for path in inputs if _is_meta_json(path)]
        if len(metas) > 1:
            raise ValueError(f'give one meta JSON at a time, not {metas}')
        data = [path for path in inputs if path not in metas]
        kwargs = {'meta_path': metas[0] if metas else None, 'data_paths': data or None,
                  'type': PreferenceDataset if preference else InternVL_V1_5_Dataset}
    kwargs.update({key: value for key, value in overrides.items() if value is not None})
    return kwargs


def _is_meta_json(path: str) -> bool:
    """A .json holding InternVL's meta object ({"name": {"annotation": ...}}) rather than samples. A file of one
    sample object goes to the sample reader (which says it expects a list); a list of dataset entries is refused."""
    if not path.lower().endswith('.json') or not os.path.isfile(path):
        return False
    with open(path, encoding='utf-8-sig') as f:
        head = f.read(4096).lstrip()
    if head.startswith('['):
        first = re.match(r'\[\s*\{\s*"(\w+)"', head)
        if first and first.group(1) in ('root', 'annotation'):
            raise DataError(f'{path}: a list of dataset entries; InternVL\'s meta JSON is one object '
                            '{"name": {"root": ..., "annotation": ...}, ...}')
        return False
    return head.startswith('{') and not re.match(r'\{\s*"(conversations|image|video|id)"', head)


def _header_sizes(sample: Sample, where: str, problems: List[str]) -> List[Optional[Tuple[int, int]]]:
    """Sizes from the line where given, else from each image's header (no pixels decoded)."""
    found = []
    for path, given in zip(sample.images, sample.sizes):
        if given is not None:
            found.append(given)
            continue
        try:
            with Image.open(path) as image:
                found.append(image.size)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            problems.append(f'{where}: cannot open image {path} ({type(error).__name__})')
            found.append(None)
    return found


def check_dataset(dataset_kwargs: Dict[str, Any], decode: bool = False) -> DataReport:
    """Builds the dataset leniently (bad lines become problems) and measures every annotation line once.

    Image sizes come from the line's width/height or the image header; `decode` also runs the full loading path
    (pixels, video frames, the length policy) on each line.
    """
    settings = dict(dataset_kwargs)
    dataset = settings.pop('type', InternVL_V1_5_Dataset)(**settings, skip_bad_samples=True)
    problems = list(dataset.skipped_problems)
    reports = {source.annotation: SourceReport(source.name, source.annotation,
                                               length_for=dataset.length_settings(source))
               for source in dataset.sources}
    report = DataReport(list(reports.values()), problems, dataset.max_length)
    sizes = (lambda line, sample: _header_sizes(sample, dataset.where_line(line), problems))
    for row in dataset.scan(image_sizes=sizes, count_known_lengths=True):
        where = dataset.where_line(row.line)
        source_report = reports[row.source.annotation]
        sample = row.sample
        source_report.samples += 1
        source_report.kinds[sample.kind] += 1
        source_report.images += len(sample.images)
        source_report.videos += sample.video is not None
        source_report.tiles += sum(row.tiles)
        total = row.text_tokens + row.image_tokens
        source_report.text.append(row.text_tokens)
        source_report.image.append(row.image_tokens)
        source_report.total.append(total)
        source_report.lengths[dataset.line_number(row.line)] = total
        report.over_length += total > dataset.max_length
        report.over_length_videos += total > dataset.max_length and sample.video is not None
        if decode:
            try:
                dataset.load_line(row.line, random.Random(0))
            except SampleError as error:
                problems.append(f'{where}: {error}')
            except SampleDropped:
                report.dropped += 1
    return report


def format_report(report: DataReport) -> str:
    lines = []
    for source in report.sources:
        kinds = ', '.join(f'{kind} {source.kinds.get(kind, 0)}' for kind in ('text', 'image', 'multi-image', 'video'))
        lines.append(f'{source.name} ({source.annotation}): {source.samples} usable samples ({kinds}); '
                     f'{source.images} images, {source.videos} videos, {source.tiles} tiles')
        if source.samples:
            lines.append(f"  {'tokens':<8}" + ''.join(f'{f"p{p}":>8}' for p in PERCENTILES) + f"{'max':>8}")
            for label, values in (('text', source.text), ('image', source.image), ('total', source.total)):
                cells = ''.join(f'{int(np.percentile(values, p)):>8}' for p in PERCENTILES)
                lines.append(f'  {label:<8}{cells}{max(values):>8}')
    notes = [f'videos among them: {report.over_length_videos}, which train with fewer frames until they fit'] \
        if report.over_length_videos else []
    if report.dropped:
        notes.append(f'{report.dropped} would be dropped: an image or every answer past the limit')
    lines.append(f'samples over max_length {report.max_length}: {report.over_length}'
                 + (f' ({"; ".join(notes)})' if notes else ''))
    lines.append(f'problems: {len(report.problems)}')
    lines += [f'  {problem}' for problem in report.problems]
    return '\n'.join(lines)


def write_lengths(report: DataReport) -> List[str]:
    """Writes each usable line's total token count as its `length` field and the settings it was counted for as
    `length_for` (the dataset counts a line again when they are not its own), atomically per file. Only those
    records change: line endings (CRLF too), blank lines and everything between records stay as they were, and so
    do the file's mode and, for a symbolic link, the link (its target is written)."""
    written = []
    for source in report.sources:
        if not source.lengths:
            continue
        path = os.path.realpath(source.annotation)
        with open(path, encoding='utf-8', newline='') as f:
            content = f.read()
        pieces, cursor = [], 0
        for number, text in read_annotation(source.annotation):
            if number not in source.lengths:
                continue
            record = json.loads(text)
            record['length'] = source.lengths[number]
            record['length_for'] = source.length_for
            start = content.index(text.rstrip('\r'), cursor)  # the record as written (a BOM stays before it)
            pieces += [content[cursor:start], json.dumps(record, ensure_ascii=False)]
            cursor = start + len(text.rstrip('\r'))
        pieces.append(content[cursor:])
        with tempfile.NamedTemporaryFile('w', encoding='utf-8', dir=os.path.dirname(path), delete=False,
                                         suffix='.tmp', newline='') as f:
            f.write(''.join(pieces))
        os.chmod(f.name, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(f.name, path)
        written.append(source.annotation)
    return written
