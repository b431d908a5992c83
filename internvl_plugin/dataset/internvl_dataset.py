"""InternVL_V1_5_Dataset: official meta JSON or XTuner's lists -> token-exact samples with their tiles.

Over-long samples: a sample longer than `max_length` loses only text after its last image (the answers that no
longer fit); if the cut would fall inside an image span, or leave no supervised token, the sample is dropped and
the next one in order takes its place, with a warning naming file:line. Images are never cut.
"""
import hashlib
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..checkpoint_layout import read_checkpoint_config
from ..files import build_from_config, load_tokenizer, resolve_model_path
from ..template_names import official_template_name
from .image import ImageSettings, TileLimits, jpeg_recompress, resize_tile
from .parallel import default_workers, map_in_processes
from .samples import Sample, SampleError, expand_video, media_outside_root, missing_media, parse_sample
from .sources import (DataError, DataSource, LineStore, check_setting, read_annotation, read_meta, repeat_indices,
                      xtuner_sources)
from .templates import IGNORE_INDEX, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Encoded, TemplateEncoder, Turn, get_template
from .video import open_video, sample_frame_indices

logger = logging.getLogger('internvl_plugin')
MAX_LISTED_PROBLEMS = 20
LINES_PER_TASK = 4096                 # annotation lines a length worker takes at a time
TOKENIZER_PROBE = 'InternVL 2.5: 你好, world!\n  <img></img> 12345 ümlaut'


@dataclass
class ScanRow:
    """One stored line as `InternVL_V1_5_Dataset.scan` sees it."""
    line: int
    source: DataSource
    sample: Sample
    text_tokens: int
    image_tokens: int
    tiles: List[int]
    length: Optional[int]     # the line's `length`, unless it was written for other settings
    stale_length: bool        # the line's `length` was written for other settings (and is not used)


class SampleDropped(Exception):
    """A sample that cannot fit max_length without cutting an image or every answer; the next one replaces it."""


def _without_placeholders(text: str) -> str:
    return text.replace(IMAGE_PLACEHOLDER, '').replace(VIDEO_PLACEHOLDER, '')


def _messages(sample: Sample) -> List[str]:
    """The texts a sample's tokens come from: its turns, and a preference pair's rejected answer."""
    return [turn.text for turn in sample.turns] + ([sample.rejected] if sample.rejected is not None else [])


def _token_counts(tokenizer: Any, texts: List[str]) -> List[int]:
    """Tokens per text without special tokens; a fast tokenizer's backend is asked directly (the Python wrapper
    around each result costs as much as the tokenising)."""
    if not texts:
        return []
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is not None:
        return [len(encoding.ids) for encoding in backend.encode_batch(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)['input_ids']]


def _build_tokenizer(tokenizer: Any, trust_remote_code: bool) -> Any:
    """A tokenizer object, an MMEngine/XTuner-style dict whose `type` builds one, or an LLM folder / hub id whose
    tokenizer gets the InternVL special tokens (what a model assembled from parts uses)."""
    if isinstance(tokenizer, str):
        return load_tokenizer(resolve_model_path(tokenizer), add_internvl_tokens=True,
                              trust_remote_code=trust_remote_code)
    return build_from_config(tokenizer)


def _length_progress(done: int, total: int) -> None:
    """Logs each tenth of a length pass of several tasks."""
    if total > 1 and done * 10 // total != (done - 1) * 10 // total:
        logger.info('token lengths: %d of %d parts counted', done, total)


class InternVL_V1_5_Dataset(Dataset):
    """Samples in InternVL's official format, tokenised and tiled exactly as the official fine-tuning code does.

    Data comes from `meta_path` (InternVL's meta JSON) and/or XTuner-style `data_paths` + `image_folders` +
    `repeat_times`. Template, tokenizer and tiling default to the checkpoint at `model_path`; every tiling
    setting can be overridden here and `min/max_dynamic_patch`, `use_thumbnail` per meta-JSON dataset.
    A fractional repeat factor r = k + f takes every sample k times plus a fixed, seeded choice of
    floor(f * n + 0.5) samples once more. Bad samples stop the build with a list of `file:line: problem`;
    `skip_bad_samples=True` leaves them out and logs how many. `exact_pixels=True` makes tiles bit-identical to
    the official preprocessing instead of within a stated tolerance of it, at 2-4x the CPU time (see image.py).
    Length estimates (for LengthGroupedSampler and packing) are counted in `length_workers` processes (the
    dataloader's worker count in the configs; None: up to 8 CPUs). A line's `length` is used only if its
    `length_for` (written beside it by check_data --write-length) names this dataset's settings, or is absent.
    """

    def __init__(self, model_path: Optional[str] = None, template: Optional[str] = None,
                 data_paths: Union[None, str, Sequence[str]] = None,
                 image_folders: Union[None, str, Sequence[Optional[str]]] = None,
                 repeat_times: Union[float, Sequence[float]] = 1, max_length: int = 8192,
                 meta_path: Optional[str] = None, tokenizer: Any = None, image_size: Optional[int] = None,
                 downsample_ratio: Optional[float] = None, dynamic_image_size: Optional[bool] = None,
                 use_thumbnail: Optional[bool] = None, min_dynamic_patch: Optional[int] = None,
                 max_dynamic_patch: Optional[int] = None, data_augment: bool = False, min_num_frames: int = 8,
                 max_num_frames: int = 32, skip_bad_samples: bool = False, exact_pixels: bool = False,
                 seed: int = 0, trust_remote_code: bool = False, length_workers: Optional[int] = None):
        super().__init__()
        config: Dict[str, Any] = {}
        if model_path is not None:
            model_path = resolve_model_path(model_path)
            config = read_checkpoint_config(model_path)
        self.tokenizer = _build_tokenizer(tokenizer, trust_remote_code) if tokenizer is not None else (
            load_tokenizer(model_path, trust_remote_code=trust_remote_code) if model_path is not None else None)
        if self.tokenizer is None:
            raise ValueError('InternVL_V1_5_Dataset needs model_path (an InternVL checkpoint) or a tokenizer')
        template = template or config.get('template')
        if template is None:
            raise ValueError('no template: pass template=... (the checkpoint config names none)')
        self.template = get_template(template)
        self.encoder = TemplateEncoder(self.template, self.tokenizer)
        overrides = {'image_size': image_size, 'downsample_ratio': downsample_ratio, 'use_thumbnail': use_thumbnail,
                     'dynamic_image_size': dynamic_image_size, 'min_dynamic_patch': min_dynamic_patch,
                     'max_dynamic_patch': max_dynamic_patch}
        for key in ('use_thumbnail', 'dynamic_image_size', 'min_dynamic_patch', 'max_dynamic_patch'):
            check_setting('InternVL_V1_5_Dataset', key, overrides[key])
        check_setting('InternVL_V1_5_Dataset', 'data_augment', data_augment)
        settings = ImageSettings.from_checkpoint(config).__dict__
        settings.update({k: v for k, v in overrides.items() if v is not None}, exact_pixels=exact_pixels)
        self.image = ImageSettings(**settings)
        if not 1 <= min_num_frames <= max_num_frames:
            raise ValueError(f'min_num_frames {min_num_frames} and max_num_frames {max_num_frames}: expected '
                             '1 <= min <= max')
        self.max_length = max_length
        self.data_augment = data_augment
        self.min_num_frames, self.max_num_frames = min_num_frames, max_num_frames
        self.skip_bad_samples = skip_bad_samples
        self.length_workers = default_workers() if length_workers is None else length_workers
        self.template_name = official_template_name(template)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id

        self.sources: List[DataSource] = []
        if meta_path is not None:
            self.sources += read_meta(meta_path)
        if data_paths is not None:
            self.sources += xtuner_sources(data_paths, image_folders, repeat_times)
        if not self.sources:
            raise ValueError('no data: pass meta_path (InternVL meta JSON) and/or data_paths')
        self._load_sources(seed)
        self._lengths: Optional[np.ndarray] = None
        self._tiles: Optional[np.ndarray] = None
        self._length_settings: Optional[str] = None
        self._warned: set = set()
        self._unusable: Dict[int, str] = {}   # stored line -> why it cannot be loaded
        self._lines_in_use = len(np.unique(self._index))   # stored lines that repeat factors keep

    # ---- building -------------------------------------------------------------------------------------------

    def _load_sources(self, seed: int) -> None:
        lines: List[str] = []
        line_numbers: List[int] = []
        source_ids: List[int] = []
        problems: List[str] = []
        index_parts = []
        self.source_counts: Dict[str, int] = {}
        for source_id, source in enumerate(self.sources):
            first = len(lines)
            outside = []
            for number, text in read_annotation(source.annotation):
                sample, problem = self._check(text, source)
                if problem:
                    problems.append(f'{source.annotation}:{number}: {problem}')
                    continue
                outside += [f'{source.annotation}:{number}: {p}' for p in media_outside_root(sample, source.root)]
                lines.append(text)
                line_numbers.append(number)
                source_ids.append(source_id)
            if outside:
                logger.warning("%s: %d media path(s) lead outside the dataset's root %s (with '..' or an absolute "
                               'path); the first: %s', source.annotation, len(outside), source.root, outside[0])
            kept = len(lines) - first
            index_parts.append(first + repeat_indices(kept, source.repeat_time, seed + source_id))
            self.source_counts[source.name] = len(index_parts[-1])
        if problems and not self.skip_bad_samples:
            listed = '\n'.join(problems[:MAX_LISTED_PROBLEMS])
            hidden = len(problems) - MAX_LISTED_PROBLEMS
            more = f'\n... and {hidden} more' if hidden > 0 else ''
            raise DataError(f'{len(problems)} bad sample(s) in the training data; fix them, or pass '
                            f'skip_bad_samples=True to leave them out:\n{listed}{more}')
        if problems:
            logger.warning('skipped %d bad sample(s) (skip_bad_samples=True); the first: %s', len(problems),
                           '; '.join(problems[:3]))
        self.skipped_problems = problems
        self._store = LineStore(lines)
        self._line_numbers = np.asarray(line_numbers, dtype=np.int64)
        self._source_ids = np.asarray(source_ids, dtype=np.int32)
        self._index = np.concatenate(index_parts) if index_parts else np.zeros(0, np.int64)
        self._refuse_if_nothing_fits(lines, line_numbers, source_ids)
        if len(self._index) == 0:
            files = ', '.join(s.annotation for s in self.sources)
            if problems:
                raise DataError(f'the dataset is empty: every sample of {files} is bad ({len(problems)}):\n'
                                + '\n'.join(problems[:MAX_LISTED_PROBLEMS]))
            raise DataError(f'the dataset is empty: {files} hold no usable samples (or every repeat factor is 0)')

    def _refuse_if_nothing_fits(self, lines: List[str], line_numbers: List[int], source_ids: List[int]) -> None:
        """Every image (or video frame) takes at least one tile: when each sample's media alone exceed max_length,
        no sample can be used, which is said at build rather than after trying each one."""
        least_per_image = self.image.tokens_per_tile + 2
        fewest = None
        for text, number, source_id in zip(lines, line_numbers, source_ids):
            sample = self.parse(text, self.sources[source_id].root)
            least = least_per_image * (1 if sample.video is not None else len(sample.images))
            if least <= self.max_length:
                return
            if fewest is None or least < fewest[0]:
                fewest = (least, f'{self.sources[source_id].annotation}:{number}')
        if fewest is not None:
            raise DataError(f'no sample fits max_length {self.max_length}: the images of each take more tokens '
                            f'(at least one tile of {self.image.tokens_per_tile} tokens each); the least, '
                            f'{fewest[1]}, needs {fewest[0]}. Raise max_length')

    def parse(self, text: str, root: str) -> Sample:
        """One stored line as a checked sample (PreferenceDataset reads its own line format)."""
        return parse_sample(text, root)

    def _check(self, text: str, source: DataSource) -> Tuple[Optional[Sample], Optional[str]]:
        """The parsed sample and what is wrong with it (None when nothing is)."""
        try:
            sample = self.parse(text, source.root)
        except SampleError as error:
            return None, str(error)
        return sample, missing_media(sample)

    # ---- lengths for LengthGroupedSampler ------------------------------------------------------------------

    @property
    def length(self) -> List[int]:
        """Estimated tokens per sample: the line's `length` when present, else text tokens + image tokens
        (from width/height when the line has them, the tile budget otherwise); no image is opened."""
        return np.abs(self._signed_lengths()).tolist()

    @property
    def modality_length(self) -> List[int]:
        """As `length`, negative for text-only samples (XTuner's sampler groups the two kinds apart)."""
        return self._signed_lengths().tolist()

    @property
    def tile_counts(self) -> List[int]:
        """Estimated tiles per sample (exact from width/height, the budget without them; videos: max frames)."""
        return self._estimates()[1][self._index].tolist()

    def _signed_lengths(self) -> np.ndarray:
        """Per sample (repeats included)."""
        return self._estimates()[0][self._index]

    def _estimates(self) -> Tuple[np.ndarray, np.ndarray]:
        """Signed lengths and tiles per stored line, computed once on first use."""
        if self._lengths is None:
            self._lengths, self._tiles = self._estimate_lengths()
        return self._lengths, self._tiles

    def _estimate_lengths(self) -> Tuple[np.ndarray, np.ndarray]:
        spans = [range(start, min(start + LINES_PER_TASK, len(self._store)))
                 for start in range(0, len(self._store), LINES_PER_TASK)]
        if len(spans) > 1:  # more than one task: seconds to minutes, said as it goes
            logger.info('counting the token lengths of %d lines in %d process(es) (for length-grouped batches '
                        'and packing; tools/check_data.py --write-length stores them for the next run)',
                        len(self._store), min(self.length_workers, len(spans)))
        parts = map_in_processes(self._estimate_span, spans, self.length_workers, on_done=_length_progress)
        lengths, tiles, stale = (np.concatenate([part[k] for part in parts]) for k in range(3))
        self._report_stale_lengths(stale)
        return lengths, tiles

    def _estimate_span(self, lines: range) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Signed lengths, tiles and stale-length flags of `lines`."""
        lengths = np.zeros(len(lines), dtype=np.int64)
        tiles = np.zeros(len(lines), dtype=np.int64)
        stale = np.zeros(len(lines), dtype=bool)
        for row in self.scan(lines=lines):
            total = row.length if row.length is not None else row.text_tokens + row.image_tokens
            at = row.line - lines.start
            lengths[at] = total if row.sample.images or row.sample.video is not None else -total
            tiles[at] = sum(row.tiles)
            stale[at] = row.stale_length
        return lengths, tiles, stale

    def _report_stale_lengths(self, stale: np.ndarray) -> None:
        for source_id in np.unique(self._source_ids[stale]).tolist():
            lines = np.flatnonzero(stale & (self._source_ids == source_id))
            source = self.sources[source_id]
            logger.warning('%s: %d line(s) carry a "length" written for other settings (the first: line %d); '
                           'they are counted again for "%s". Run tools/check_data.py --write-length to store '
                           'the new ones', source.annotation, len(lines), self.line_number(int(lines[0])),
                           self.length_settings(source))

    def length_settings(self, source: DataSource) -> str:
        """What a sample's token count depends on besides its text: check_data writes it as `length_for`, and a
        line whose `length_for` differs has its `length` counted again."""
        if self._length_settings is None:
            probe = self.tokenizer(TOKENIZER_PROBE, add_special_tokens=True)['input_ids']
            tokenizer = hashlib.sha1(f'{type(self.tokenizer).__name__} {len(self.tokenizer)} {probe}'.encode())
            self._length_settings = (f'{self.template_name} tokenizer {tokenizer.hexdigest()[:8]} '
                                     f'{self.image.image_size}px x{self.image.downsample_ratio}')
        if not self.image.dynamic_image_size:
            tiling = 'one tile'
        else:
            min_tiles, max_tiles, thumbnail = self._tiling(source, 1)
            tiling = f'tiles {min_tiles}-{max_tiles}' + (' + thumbnail' if thumbnail else '')
        return f'{self._length_settings} {tiling}, {self.max_num_frames} frames'

    def scan(self, image_sizes: Optional[Callable[[int, Sample], List[Optional[Tuple[int, int]]]]] = None,
             count_known_lengths: bool = False, lines: Optional[range] = None,
             chunk: int = 1024) -> Iterator['ScanRow']:
        """Every stored line of `lines` (default: all) once, with text tokens (tokenised in batches) and tiles per
        image.

        Tiles come from the line's width/height, or from `image_sizes(line, sample)` (e.g. image headers), else
        the tile budget is assumed. Lines with a current `length` skip tokenisation unless `count_known_lengths`.
        """
        lines = range(len(self._store)) if lines is None else lines
        overhead = len(self.encoder.encode(None, [], []).input_ids)
        one_token = len(self.tokenizer('a', add_special_tokens=False)['input_ids'])
        per_turn = (len(self.encoder.encode(None, [Turn('human', 'a'), Turn('gpt', 'a')], []).input_ids)
                    - overhead - 2 * one_token) // 2
        settings = [self.length_settings(source) for source in self.sources]
        for start in range(lines.start, lines.stop, chunk):
            part = []
            for line in range(start, min(start + chunk, lines.stop)):
                source_id = int(self._source_ids[line])
                sample = self.parse(self._store[line], self.sources[source_id].root)
                stale = sample.length is not None and sample.length_for not in (None, settings[source_id])
                part.append((line, self.sources[source_id], sample, None if stale else sample.length, stale))
            texts = ['\n'.join(_without_placeholders(text) for text in _messages(sample))
                     for _, _, sample, length, _ in part if count_known_lengths or length is None]
            counts = iter(_token_counts(self.tokenizer, texts))
            for line, source, sample, length, stale in part:
                messages = len(_messages(sample))
                text_tokens = (overhead + per_turn * messages + next(counts) - (messages - 1)
                               if count_known_lengths or length is None else 0)
                sizes = image_sizes(line, sample) if image_sizes is not None else sample.sizes
                tiles = self.tiles_per_image(sample, source, sizes)
                yield ScanRow(line, source, sample, text_tokens,
                              sum(n * self.image.tokens_per_tile + 2 for n in tiles), tiles, length, stale)

    def tiles_per_image(self, sample: Sample, source: DataSource,
                        sizes: Sequence[Optional[Tuple[int, int]]]) -> List[int]:
        """Tiles of each image (or video frame) without decoding: exact from sizes, the budget without them."""
        if sample.video is not None:
            return [1] * self.max_num_frames
        limits = self._tiling(source, len(sample.images))
        return [self.image.count(size, limits) for size in sizes]

    def _tiling(self, source: DataSource, n_images: int) -> TileLimits:
        """The tile limits for one of `n_images` images of a sample from `source` (its meta overrides first)."""
        return self.image.limits(n_images, source.max_dynamic_patch, source.min_dynamic_patch, source.use_thumbnail)

    # ---- loading ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def where(self, index: int) -> str:
        """`annotation:line` of the sample at `index`."""
        return self.where_line(int(self._index[index]))

    def where_line(self, line: int) -> str:
        return f'{self.sources[self._source_ids[line]].annotation}:{self.line_number(line)}'

    def line_number(self, line: int) -> int:
        """The annotation file line a stored line came from."""
        return int(self._line_numbers[line])

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.fetch(index)[1]

    def fetch(self, index: int) -> Tuple[int, Dict[str, Any]]:
        """The sample at `index`, or the next loadable one standing in for it, with the index it came from. Lines
        found unusable are remembered, so a dataset of them fails once instead of every index scanning it all."""
        for attempt in range(len(self)):
            if len(self._unusable) == self._lines_in_use:
                break
            position = (index + attempt) % len(self)
            line = int(self._index[position])
            if line in self._unusable:
                continue
            try:
                return position, self.load(position)
            except SampleError as error:
                message = f'{self.where(position)}: {error}'
                if not self.skip_bad_samples:
                    raise DataError(message + ' (pass skip_bad_samples=True to use the next sample instead)') from None
            except SampleDropped as dropped:
                message = f'{self.where(position)}: {dropped}'
            self._unusable.setdefault(line, message)
            self.warn_once(position, f'{message}; using the next sample instead')
        first = next(iter(self._unusable.values()), '')
        raise DataError(f'none of the {len(self)} samples can be loaded: each is bad or cannot fit max_length '
                        f'{self.max_length}; the first: {first}')

    def warn_once(self, index: int, message: str) -> None:
        """Logs `message` for the sample at `index` unless its annotation line already had a warning; after
        MAX_LISTED_PROBLEMS lines, one more warning says the rest are left out."""
        line = int(self._index[index])
        if line in self._warned:
            return
        self._warned.add(line)
        if len(self._warned) <= MAX_LISTED_PROBLEMS:
            logger.warning(message)
        elif len(self._warned) == MAX_LISTED_PROBLEMS + 1:
            logger.warning('more than %d samples of this dataset had warnings; the rest are left out '
                           '(tools/check_data.py lists every problem)', MAX_LISTED_PROBLEMS)

    def load(self, index: int, rng: Optional[random.Random] = None) -> Dict[str, Any]:
        """The sample at `index` as tensors; raises SampleError for bad media, SampleDropped when it cannot fit."""
        return self.load_line(int(self._index[index]), rng)

    def load_line(self, line: int, rng: Optional[random.Random] = None) -> Dict[str, Any]:
        """As `load`, by stored line (each annotation line once, before repeat factors)."""
        rng = rng or random.Random(random.getrandbits(64))
        source = self.sources[self._source_ids[line]]
        sample = self.parse(self._store[line], source.root)
        augment = self.data_augment if source.data_augment is None else source.data_augment
        if sample.video is not None:
            encoded, tiles = self._load_video(sample, rng)
        elif sample.images:
            encoded, tiles = self._load_images(sample, source)
        else:
            encoded, tiles = self._fit_encoded(self._encode(sample, sample.turns, [])), []
        size = self.image.image_size
        pixel_values = torch.cat(tiles) if tiles else torch.zeros(0, 3, size, size, dtype=torch.uint8)
        if augment and len(pixel_values):
            pixel_values = torch.stack([jpeg_recompress(tile, rng) for tile in pixel_values]).view_as(pixel_values)
        return self._item(encoded, pixel_values)

    # The encoding steps a subclass with another kind of sample replaces (PreferenceDataset: a pair of answers).

    def _encode(self, sample: Sample, turns: List[Turn], image_tokens: List[int]) -> Any:
        return self.encoder.encode(sample.system, turns, image_tokens)

    def _fit_encoded(self, encoded: Any) -> Any:
        return self._fit(encoded)

    def _encoded_length(self, encoded: Any) -> int:
        return len(encoded.input_ids)

    def _item(self, encoded: Any, pixel_values: torch.Tensor) -> Dict[str, Any]:
        return {'input_ids': torch.tensor(encoded.input_ids, dtype=torch.long),
                'labels': torch.tensor(encoded.labels, dtype=torch.long),
                'pixel_values': pixel_values, 'image_flags': torch.ones(len(pixel_values), dtype=torch.long),
                'pad_token_id': self.pad_token_id}

    def _fit(self, encoded: Encoded) -> Encoded:
        """The length policy: cut only text after the last image, and only if an answer token remains."""
        if len(encoded.input_ids) <= self.max_length:
            return encoded
        if encoded.image_ends and encoded.image_ends[-1] > self.max_length:
            raise SampleDropped(f'{len(encoded.input_ids)} tokens with an image ending at token '
                                f'{encoded.image_ends[-1]}, past max_length {self.max_length}; dropped')
        labels = encoded.labels[:self.max_length]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise SampleDropped(f'{len(encoded.input_ids)} tokens and no answer token within max_length '
                                f'{self.max_length}; dropped')
        return Encoded(encoded.input_ids[:self.max_length], labels, encoded.image_ends)

    def _load_images(self, sample: Sample, source: DataSource) -> Tuple[Any, List[torch.Tensor]]:
        """Tile counts come from the image headers, so a sample that will be dropped is never decoded."""
        images = [self._open_image(path) for path in sample.images]
        counts = self.tiles_per_image(sample, source, [image.size for image in images])
        image_tokens = [n * self.image.tokens_per_tile for n in counts]
        encoded = self._fit_encoded(self._encode(sample, sample.turns, image_tokens))
        limits = self._tiling(source, len(images))
        tiles = []
        for path, image in zip(sample.images, images):
            try:
                tiles.append(self.image.tile(image, limits))
            except (OSError, ValueError) as error:
                raise SampleError(f'cannot decode image {path} ({type(error).__name__}: {error})') from None
        return encoded, tiles

    @staticmethod
    def _open_image(path: str) -> Image.Image:
        """Reads the header only; pixels are decoded on first use."""
        try:
            return Image.open(path)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise SampleError(f'cannot open image {path} ({type(error).__name__}: {error})') from None

    def _load_video(self, sample: Sample, rng: random.Random) -> Tuple[Any, List[torch.Tensor]]:
        try:
            total, read_frames = open_video(sample.video, sample.clip)
        except (OSError, ValueError) as error:
            raise SampleError(str(error)) from None
        n_frames = min(rng.randint(self.min_num_frames, self.max_num_frames), total)
        per_tile = self.image.tokens_per_tile
        while True:  # fewer frames until the sample fits: frames are sampled, never cut
            encoded = self._encode(sample, expand_video(sample.turns, n_frames), [per_tile] * n_frames)
            over = self._encoded_length(encoded) - self.max_length
            if over <= 0 or n_frames == 1:
                break
            n_frames = max(1, n_frames - -(-over // (per_tile + 2)))
        encoded = self._fit_encoded(encoded)
        try:
            frames = read_frames(sample_frame_indices(n_frames, total, rng))
        except (OSError, ValueError) as error:
            raise SampleError(str(error)) from None
        return encoded, [resize_tile(frame, self.image.image_size, self.image.exact_pixels) for frame in frames]
