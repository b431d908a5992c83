"""The five InternVL chat templates: rendering, token ids and labels as the official preprocessing makes them.

internlm2-chat, Hermes-2 and phi3-chat render the whole conversation into one string, tokenised at once;
internvl2_5 and internvl3_5_gpt_oss tokenise every turn on its own. Labels cover each answer and the token that
ends it, found from character offsets (fast tokenizers) or prefix lengths (slow ones), never by the official
counting trick that masks whole samples when a tokenizer behaves unexpectedly.

internvl3_5_gpt_oss is GPT-OSS's harmony format: an answer is `<|channel|>final<|message|>` + text, supervised
with its header, and ends with `<|return|>` when it is the conversation's last message, `<|end|>` before another
turn (the official preprocessing means this, but at its HEAD takes the ending from a stale loop variable). An
answer with `<think>...</think>` puts the thinking in the analysis channel first, as the official `_with_think`
preprocessing does.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..template_names import ALIASES, official_template_name

IGNORE_INDEX = -100
IMG_START, IMG_END, IMG_CONTEXT = '<img>', '</img>', '<IMG_CONTEXT>'
IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER = '<image>', '<video>'

_INTERNVL_SYSTEM = ('你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, '
                    '是一个有用无害的人工智能助手。')
_GPT_OSS_SYSTEM = ('You are InternVL, a large language model trained by Shanghai AI Laboratory.\nKnowledge cutoff: '
                   '2024-06\nCurrent date: 2025-08-06\n\nReasoning: low\n\n# Valid channels: final. Channel must be '
                   'included for every message.')
_INTERNVL2_5_SYSTEM = ('你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的'
                       '多模态大语言模型。')


@dataclass(frozen=True)
class ChatTemplate:
    """MPT style: system_prefix + system + end + sep, then per turn role prefix + message + end + sep."""
    name: str
    system_prefix: str
    system: str
    user_prefix: str
    assistant_prefix: str
    end: str                  # closes every turn; supervised after each answer
    sep: str = ''             # unsupervised text after `end` (internvl2_5's newline)
    per_turn: bool = False    # tokenise each turn separately (internvl2_5) instead of the whole string
    strip_messages: bool = False  # the official internlm2-chat preprocessing strips every message
    final_channel: str = ''   # supervised header before each answer (harmony's final channel)
    analysis_channel: str = ''  # where an answer's <think> text goes (harmony); empty: it stays in the answer
    last_end: str = ''        # ends the conversation's last answer instead of `end` (harmony's <|return|>)


TEMPLATES: Dict[str, ChatTemplate] = {t.name: t for t in (
    ChatTemplate('internlm2-chat', '<|im_start|>system\n', _INTERNVL_SYSTEM, '<|im_start|>user\n',
                 '<|im_start|>assistant\n', '<|im_end|>', strip_messages=True),
    ChatTemplate('Hermes-2', '<|im_start|>system\n', _INTERNVL_SYSTEM, '<|im_start|>user\n',
                 '<|im_start|>assistant\n', '<|im_end|>'),
    ChatTemplate('phi3-chat', '<|system|>\n', _INTERNVL_SYSTEM, '<|user|>\n', '<|assistant|>\n', '<|end|>'),
    ChatTemplate('internvl2_5', '<|im_start|>system\n', _INTERNVL2_5_SYSTEM, '<|im_start|>user\n',
                 '<|im_start|>assistant\n', '<|im_end|>', sep='\n', per_turn=True),
    ChatTemplate('internvl3_5_gpt_oss', '<|start|>system<|message|>', _GPT_OSS_SYSTEM, '<|start|>user<|message|>',
                 '<|start|>assistant', '<|end|>', per_turn=True, final_channel='<|channel|>final<|message|>',
                 analysis_channel='<|channel|>analysis<|message|>', last_end='<|return|>'),
)}
THINK_START, THINK_END = '<think>', '</think>'
# XTuner-style spellings of the same templates.
def get_template(name: str) -> ChatTemplate:
    """By official name (as in a checkpoint's config.json) or XTuner-style alias."""
    if isinstance(name, dict):
        raise ValueError('template is an XTuner PROMPT_TEMPLATE dict, which renders prompts differently from the '
                         "ones InternVL was trained with; pass a name such as 'internlm2-chat' or 'internvl2_5', or "
                         "leave it out to use the checkpoint's")
    key = official_template_name(name)
    if key not in TEMPLATES:
        choices = sorted(set(TEMPLATES) | set(ALIASES))
        raise ValueError(f"unknown template '{name}'; expected one of {choices}")
    return TEMPLATES[key]


@dataclass
class Turn:
    role: str   # 'human' or 'gpt'
    text: str   # with <image> placeholders where images go


@dataclass
class Encoded:
    input_ids: List[int]
    labels: List[int]
    image_ends: List[int]   # index just past each image span's </img>, in order


def image_span(n_tokens: int) -> str:
    return IMG_START + IMG_CONTEXT * n_tokens + IMG_END


class TemplateEncoder:
    """Turns (system, turns, tokens per image) into ids and labels for one template and tokenizer.

    Image spans are tokenised as `<img><IMG_CONTEXT></img>` and widened afterwards: every piece is a special
    token, so the text between them, and hence every id, is what tokenising the full span would give.
    """

    def __init__(self, template: ChatTemplate, tokenizer: Any):
        self.template = template
        self.tokenizer = tokenizer
        ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (IMG_START, IMG_END, IMG_CONTEXT)}
        missing = [token for token, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f'the tokenizer has no {missing} token(s); an InternVL checkpoint tokenizer has them')
        self.img_start_id, self.img_end_id, self.img_context_id = ids[IMG_START], ids[IMG_END], ids[IMG_CONTEXT]
        self.bos = self._leading_special_tokens()

    def _leading_special_tokens(self) -> List[int]:
        """What the tokenizer puts before any text (InternLM2's and Phi-3's BOS; nothing for Qwen2)."""
        plain = self.tokenizer('a', add_special_tokens=False)['input_ids']
        full = self.tokenizer('a')['input_ids']
        return full[:len(full) - len(plain)] if full[len(full) - len(plain):] == plain else []

    def render(self, system: Optional[str], turns: Sequence[Turn]) -> List[List[Tuple[str, bool]]]:
        """Per turn, (text, supervised) pieces; all of them joined are the official prompt string."""
        t = self.template
        rendered = [[(t.system_prefix + (t.system if system is None else system) + t.end + t.sep, False)]]
        for index, turn in enumerate(turns):
            text = turn.text.strip() if t.strip_messages else turn.text
            if turn.role == 'human':
                rendered.append([(t.user_prefix + text + t.end + t.sep, False)])
            else:
                answer = [(t.assistant_prefix, False), (self._answer(text, index == len(turns) - 1), True)]
                rendered.append(answer + [(t.sep, False)] if t.sep else answer)
        return rendered

    def _answer(self, text: str, last: bool) -> str:
        """The supervised text of one answer after the assistant prefix."""
        t = self.template
        end = t.last_end if last and t.last_end else t.end
        if t.analysis_channel and THINK_START in text and THINK_END in text:
            thinking, final = text.rsplit(THINK_END, 1)
            thinking = thinking.split(THINK_START, 1)[1]
            return (t.analysis_channel + thinking.strip() + t.end + t.assistant_prefix + t.final_channel +
                    final.strip() + end)
        return t.final_channel + text + end

    def encode(self, system: Optional[str], turns: Sequence[Turn], image_tokens: Sequence[int],
               add_generation_prompt: bool = False) -> Encoded:
        """`add_generation_prompt`: end with the assistant prefix, for generating the answer to the last question."""
        rendered = [[(text.replace(IMAGE_PLACEHOLDER, image_span(1)), supervised) for text, supervised in turn]
                    for turn in self.render(system, turns)]
        if add_generation_prompt:
            rendered.append([(self.template.assistant_prefix, False)])
        if self.template.per_turn:
            # internvl2_5: each turn tokenised alone, the tokenizer's BOS (if any) once in front.
            ids, labels = list(self.bos), [IGNORE_INDEX] * len(self.bos)
            for pieces in rendered:
                turn_ids, turn_labels = self._tokenize(pieces, add_special_tokens=False)
                ids += turn_ids
                labels += turn_labels
        else:
            ids, labels = self._tokenize([piece for turn in rendered for piece in turn], add_special_tokens=True)
        return self._widen_images(ids, labels, image_tokens)

    @property
    def stop_token(self) -> str:
        """What ends a generated answer: harmony's <|return|> (its <|end|> may close an analysis message first)."""
        return self.template.last_end or self.template.end

    def answer_text(self, generated_ids: Sequence[int]) -> str:
        """The answer in generated ids: for harmony the final channel's message, headers and endings left out."""
        t = self.template
        if not t.final_channel:
            return self.tokenizer.decode(generated_ids, skip_special_tokens=True).strip()
        return self.final_message(self.tokenizer.decode(generated_ids, skip_special_tokens=False)).strip()

    def final_message(self, text: str) -> str:
        """Harmony text after its last final-channel header, up to the first end token (the whole text without a
        header)."""
        text = text.rsplit(self.template.final_channel, 1)[-1]
        for end in self.end_tokens():
            text = text.split(end, 1)[0]
        return text

    def end_tokens(self) -> List[str]:
        return [end for end in (self.template.last_end, self.template.end) if end]

    def _tokenize(self, pieces: Sequence[Tuple[str, bool]], add_special_tokens: bool) -> Tuple[List[int], List[int]]:
        """Ids of the joined pieces; labels on the tokens that start inside a supervised piece. A token that
        merges the end of the prompt with the start of the answer (e.g. Qwen's '\\n\\n' for an answer opening
        with a newline) starts in the prompt and stays unsupervised, as the official code's labels have it."""
        text = ''.join(piece for piece, _ in pieces)
        spans, position = [], 0
        for piece, supervised in pieces:
            if supervised:
                spans.append((position, position + len(piece)))
            position += len(piece)
        if getattr(self.tokenizer, 'is_fast', False):
            encoded = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
            ids, offsets = encoded['input_ids'], encoded['offset_mapping']
            labels = [token if any(a < b and start <= a < end for start, end in spans) else IGNORE_INDEX
                      for token, (a, b) in zip(ids, offsets)]
            return ids, labels
        # Slow tokenizers give no offsets: count the tokens of the text before each span boundary.
        ids = self.tokenizer(text, add_special_tokens=add_special_tokens)['input_ids']
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            first, last = (len(self.tokenizer(text[:n], add_special_tokens=add_special_tokens)['input_ids'])
                           for n in (start, end))
            labels[first:last] = ids[first:last]
        return ids, labels

    def _widen_images(self, ids: List[int], labels: List[int], image_tokens: Sequence[int]) -> Encoded:
        out_ids: List[int] = []
        out_labels: List[int] = []
        image_ends: List[int] = []
        image = 0
        for token, label in zip(ids, labels):
            if token == self.img_context_id:
                if image >= len(image_tokens):
                    raise ValueError(f'the conversation has more image spans than the {len(image_tokens)} '
                                     'image(s) of the sample')
                out_ids += [token] * image_tokens[image]
                out_labels += [IGNORE_INDEX] * image_tokens[image]
                image += 1
                continue
            out_ids.append(token)
            out_labels.append(IGNORE_INDEX if token in (self.img_start_id, self.img_end_id) else label)
            if token == self.img_end_id:
                image_ends.append(len(out_ids))
        if image != len(image_tokens):
            raise ValueError(f'the conversation has {image} image span(s) for {len(image_tokens)} image(s)')
        return Encoded(out_ids, out_labels, image_ends)
