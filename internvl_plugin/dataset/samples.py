"""One JSON sample -> a checked conversation with its media, placeholders in place as the official code puts them."""
import json
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from .templates import IMAGE_PLACEHOLDER, IMG_CONTEXT, IMG_END, IMG_START, VIDEO_PLACEHOLDER, Turn


class SampleError(ValueError):
    """A sample that cannot be used; the message says what is wrong (the caller adds file:line)."""


@dataclass
class Sample:
    system: Optional[str]
    turns: List[Turn]
    images: List[str] = field(default_factory=list)           # resolved paths
    sizes: List[Optional[Tuple[int, int]]] = field(default_factory=list)  # (width, height) when the line has them
    video: Optional[List[str]] = None                         # a video file, a frame folder, or frame files
    clip: Optional[Tuple[float, float]] = None                # seconds of the video to use
    length: Optional[int] = None                              # precomputed total tokens, when the line has it
    length_for: Optional[str] = None                          # the settings `length` was counted for, if recorded
    rejected: Optional[str] = None                            # a preference pair's rejected answer (turns: chosen)

    @property
    def kind(self) -> str:
        if self.video is not None:
            return 'video'
        return {0: 'text', 1: 'image'}.get(len(self.images), 'multi-image')


def _paths(record: dict, key: str) -> Optional[List[str]]:
    value = record.get(key)
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise SampleError(f'"{key}" is {value!r}; expected a path or a non-empty list of paths')
    return values


def refuse_image_tokens(text: str, where: str) -> None:
    """The tokens that frame image features may only come from <image> / <video> placeholders: written in the text
    they would shift or break the image spans."""
    for token in (IMG_CONTEXT, IMG_START, IMG_END):
        if token in text:
            raise SampleError(f'{where} holds {token}, a token reserved for image features; write <image> where an '
                              'image goes, or remove it')


def _turns(record: dict) -> Tuple[Optional[str], List[Turn]]:
    conversations = record.get('conversations')
    if not isinstance(conversations, list) or not conversations:
        pair = conversations is None and {'question', 'chosen', 'rejected'} <= set(record)
        raise SampleError('"conversations" is missing or empty; expected a list of {"from", "value"} turns' + (
            ' (this line is a preference pair: question / chosen / rejected; PreferenceDataset reads those)'
            if pair else ''))
    system, turns = None, []
    for number, turn in enumerate(conversations, start=1):
        if not isinstance(turn, dict) or not isinstance(turn.get('value'), str) or 'from' not in turn:
            raise SampleError(f'turn {number} is {str(turn)[:60]!r}; expected {{"from": ..., "value": "..."}}')
        role = turn['from']
        if role == 'system' and number == 1:
            system = turn['value']
            refuse_image_tokens(system, 'the system turn')
            continue
        if role not in ('human', 'gpt'):
            raise SampleError(f"turn {number} has role {role!r}; expected 'human' or 'gpt' ('system' only first)")
        expected = 'human' if len(turns) % 2 == 0 else 'gpt'
        if role != expected:
            raise SampleError(f"turn {number} is from {role!r} where {expected!r} was expected: turns must "
                              "alternate human, gpt, human, ...")
        if not turn['value'].strip():
            raise SampleError(f'turn {number} ({role}) is empty')
        refuse_image_tokens(turn['value'], f'turn {number} ({role})')
        turns.append(Turn(role, turn['value']))
    if len(turns) < 2:
        raise SampleError('the conversation has no gpt answer; expected at least one human turn and one gpt turn')
    return system, turns


def _sizes(record: dict, n_images: int) -> List[Optional[Tuple[int, int]]]:
    if 'width' not in record or 'height' not in record or not n_images:
        return [None] * n_images
    given = record['width'], record['height']
    widths, heights = ([v] for v in given) if n_images == 1 and not isinstance(given[0], list) else given
    if not (isinstance(widths, list) and isinstance(heights, list) and len(widths) == len(heights) == n_images
            and all(isinstance(v, int) and v > 0 for v in widths + heights)):
        raise SampleError(f'width/height are {given[0]!r}/{given[1]!r}; expected positive integers, one per image')
    return list(zip(widths, heights))


def _prepend(turns: List[Turn], text: str) -> None:
    turns[0] = Turn(turns[0].role, text + turns[0].text)


def _place_media(turns: List[Turn], n_images: int, is_video: bool) -> None:
    """Check placeholder counts; add `<image>\\n` (or `<video>\\n`) to the first question when there are none."""
    for number, turn in enumerate(turns, start=1):
        if turn.role == 'gpt' and (IMAGE_PLACEHOLDER in turn.text or VIDEO_PLACEHOLDER in turn.text):
            raise SampleError(f'gpt turn {number} holds an {IMAGE_PLACEHOLDER} or {VIDEO_PLACEHOLDER} placeholder; '
                              'images belong in human turns')
    n_image_marks = sum(turn.text.count(IMAGE_PLACEHOLDER) for turn in turns)
    n_video_marks = sum(turn.text.count(VIDEO_PLACEHOLDER) for turn in turns)
    if is_video:
        if n_image_marks or n_video_marks > 1:
            raise SampleError(f'a video sample needs one {VIDEO_PLACEHOLDER} placeholder (or none) and no '
                              f'{IMAGE_PLACEHOLDER}; found {n_video_marks} and {n_image_marks}')
        if not n_video_marks:
            _prepend(turns, VIDEO_PLACEHOLDER + '\n')
        return
    if n_video_marks:
        raise SampleError(f'the sample has {n_video_marks} {VIDEO_PLACEHOLDER} placeholder(s) but no "video"')
    if n_image_marks == 0 and n_images:
        _prepend(turns, (IMAGE_PLACEHOLDER + '\n') * n_images)
    elif n_image_marks != n_images:
        raise SampleError(f'{n_image_marks} {IMAGE_PLACEHOLDER} placeholder(s) for {n_images} image(s); '
                          'expected one per image (or none, to put them all before the first question)')


def decode_record(text: str) -> dict:
    """One line's JSON object."""
    try:
        record: Any = json.loads(text)
    except json.JSONDecodeError as error:
        raise SampleError(f'invalid JSON ({error.msg} at column {error.colno})') from None
    if not isinstance(record, dict):
        raise SampleError(f'expected a JSON object per sample, found {type(record).__name__}')
    return record


def parse_sample(text: str, root: str) -> Sample:
    """Checks the structure (not the files) and returns the sample with media paths joined to `root`."""
    return parse_record(decode_record(text), root)


def parse_record(record: dict, root: str) -> Sample:
    """As parse_sample, from the decoded JSON object."""
    system, turns = _turns(record)
    images, video = _paths(record, 'image'), _paths(record, 'video')
    if images and video:
        raise SampleError('the sample has both "image" and "video"; expected one of them')
    images = images or []
    _place_media(turns, len(images), video is not None)
    clip = record.get('clip')
    if clip is not None and not (isinstance(clip, list) and len(clip) == 2 and all(
            isinstance(v, (int, float)) for v in clip) and 0 <= clip[0] < clip[1]):
        raise SampleError(f'"clip" is {clip!r}; expected [start_seconds, end_seconds] with start < end')
    length = record.get('length')
    if length is not None and not (isinstance(length, int) and length >= 0):
        raise SampleError(f'"length" is {length!r}; expected a token count (integer >= 0)')
    length_for = record.get('length_for')
    if length_for is not None and not isinstance(length_for, str):
        raise SampleError(f'"length_for" is {length_for!r}; expected the settings text check_data writes')
    join = (lambda path: os.path.join(root, path))
    return Sample(system=system, turns=turns, images=[join(p) for p in images], sizes=_sizes(record, len(images)),
                  video=[join(p) for p in video] if video is not None else None,
                  clip=tuple(clip) if clip is not None else None, length=length, length_for=length_for)


def media_outside_root(sample: Sample, root: str) -> List[str]:
    """The sample's image / video paths that do not lie inside `root` once '..' is resolved (as written: a
    symbolic link inside the root that points elsewhere is the user's own layout)."""
    top = os.path.normpath(os.path.abspath(root))
    paths = sample.images + (sample.video or [])
    return [path for path in paths if not os.path.normpath(os.path.abspath(path)).startswith(top + os.sep)]


def missing_media(sample: Sample) -> Optional[str]:
    """What is wrong with the sample's files (missing, unreadable), or None; opens nothing."""
    for path in sample.images:
        if os.path.isdir(path):
            return f'image {path} is a folder; expected an image file'
        if not os.path.isfile(path):
            return f'image {path} does not exist'
        if not os.access(path, os.R_OK):
            return f'image {path} is not readable'
    if sample.video is not None:
        if len(sample.video) == 1 and os.path.isdir(sample.video[0]):
            return None
        for path in sample.video:
            if not os.path.isfile(path):
                return f'video {path} does not exist'
            if not os.access(path, os.R_OK):
                return f'video {path} is not readable'
    return None


def expand_video(turns: Sequence[Turn], n_frames: int) -> List[Turn]:
    """`<video>` becomes `Frame-1: <image>\\nFrame-2: <image>...` as the official video samples are written."""
    frames = '\n'.join(f'Frame-{i + 1}: {IMAGE_PLACEHOLDER}' for i in range(n_frames))
    return [Turn(turn.role, turn.text.replace(VIDEO_PLACEHOLDER, frames, 1)) for turn in turns]
