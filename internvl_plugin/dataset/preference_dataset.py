"""PreferenceDataset: MPO / DPO pairs in the official MMPR format, read and tiled as the SFT samples are.

A line is `{"image": ... | "video": ..., "question": "...", "chosen": "...", "rejected": "..."}` (no media: text only;
multi-image and video placeholders as in SFT). As the official MPO code does, each answer is the reply to the one
question under the chat template: prompt + chosen and prompt + rejected are tokenised as the two SFT conversations
would be (so the ids are token-exact), then split where the answers part: the shared prompt is kept once and each
answer is a continuation, supervised on its text and the token that ends it. The media are tiled once for both.
Sources, repeat factors, tiling settings and the file:line report of bad lines are the SFT dataset's; `max_length`
bounds prompt + each answer (the official max_seq_length), and only answer text is ever cut.
"""
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from .internvl_dataset import InternVL_V1_5_Dataset
from .samples import Sample, SampleError, decode_record, parse_record, refuse_image_tokens
from .templates import IGNORE_INDEX, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, Encoded, Turn

PAIR_KEYS = {'question': 'the prompt', 'chosen': 'the preferred answer', 'rejected': 'the worse answer'}


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded


def parse_preference_sample(text: str, root: str) -> Sample:
    """A checked pair: the sample's turns are the question and the chosen answer, `rejected` the other answer."""
    record = decode_record(text)
    for key, what in PAIR_KEYS.items():
        if key not in record:
            raise SampleError(f'"{key}" is missing; expected {what} as text (a preference line has "question", '
                              '"chosen" and "rejected")')
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            raise SampleError(f'"{key}" is {value!r}; expected {what} as non-empty text')
    for key in ('chosen', 'rejected'):
        if IMAGE_PLACEHOLDER in record[key] or VIDEO_PLACEHOLDER in record[key]:
            raise SampleError(f'"{key}" holds an {IMAGE_PLACEHOLDER} or {VIDEO_PLACEHOLDER} placeholder; images '
                              'belong in "question"')
        refuse_image_tokens(record[key], f'"{key}"')
    if record['chosen'] == record['rejected']:
        raise SampleError('"chosen" and "rejected" are the same text; a pair needs two different answers')
    conversation = [{'from': 'human', 'value': record['question']}, {'from': 'gpt', 'value': record['chosen']}]
    sample = parse_record({**record, 'conversations': conversation}, root)
    sample.rejected = record['rejected']
    return sample


def prompt_length(pair: EncodedPair) -> int:
    """The tokens both sequences share before either answer's first supervised token."""
    first_answer_token = min(next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
                             for encoded in (pair.chosen, pair.rejected))
    shared = 0
    while shared < first_answer_token and pair.chosen.input_ids[shared] == pair.rejected.input_ids[shared]:
        shared += 1
    return shared


class PreferenceDataset(InternVL_V1_5_Dataset):
    """Preference pairs (official MMPR / MPO format) with InternVL_V1_5_Dataset's sources and settings.

    Each item: `prompt_ids`, `chosen_ids` / `chosen_labels`, `rejected_ids` / `rejected_labels` (continuations of
    the prompt), `pixel_values` / `image_flags` (the media once) and `pad_token_id`; `preference_collate_fn`
    batches them."""

    def parse(self, text: str, root: str) -> Sample:
        return parse_preference_sample(text, root)

    def _encode(self, sample: Sample, turns: List[Turn], image_tokens: List[int]) -> EncodedPair:
        rejected = list(turns[:-1]) + [Turn('gpt', sample.rejected)]
        return EncodedPair(self.encoder.encode(sample.system, turns, image_tokens),
                           self.encoder.encode(sample.system, rejected, image_tokens))

    def _fit_encoded(self, encoded: EncodedPair) -> EncodedPair:
        return EncodedPair(self._fit(encoded.chosen), self._fit(encoded.rejected))

    def _encoded_length(self, encoded: EncodedPair) -> int:
        return max(len(encoded.chosen.input_ids), len(encoded.rejected.input_ids))

    def _item(self, encoded: EncodedPair, pixel_values: torch.Tensor) -> Dict[str, Any]:
        start = prompt_length(encoded)
        item = {'prompt_ids': torch.tensor(encoded.chosen.input_ids[:start], dtype=torch.long)}
        for name in ('chosen', 'rejected'):
            answer = getattr(encoded, name)
            item[f'{name}_ids'] = torch.tensor(answer.input_ids[start:], dtype=torch.long)
            item[f'{name}_labels'] = torch.tensor(answer.labels[start:], dtype=torch.long)
        item.update(pixel_values=pixel_values, image_flags=torch.ones(len(pixel_values), dtype=torch.long),
                    pad_token_id=self.pad_token_id)
        return item
