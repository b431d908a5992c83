"""Token-exact prompts and labels for the five templates, written out by hand from the official strings."""
import pytest
from conftest import needs_gpt_oss, needs_qwen3

from internvl_plugin.dataset.templates import IGNORE_INDEX, TemplateEncoder, Turn, get_template
from internvl_plugin.files import load_tokenizer

OLD_SYSTEM = '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。'
NEW_SYSTEM = '你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。'
SPAN = '<img>' + '<IMG_CONTEXT>' * 5 + '</img>'

# (template, family whose tiny tokenizer it is used with, expected string for one image question and answer)
SINGLE = {
    'internlm2-chat': ('internlm2', f'<|im_start|>system\n{OLD_SYSTEM}<|im_end|><|im_start|>user\n{SPAN}\nWhat is it?'
                                    '<|im_end|><|im_start|>assistant\nA red circle.<|im_end|>'),
    'Hermes-2': ('llama', f'<|im_start|>system\n{OLD_SYSTEM}<|im_end|><|im_start|>user\n{SPAN}\nWhat is it?'
                          '<|im_end|><|im_start|>assistant\nA red circle.<|im_end|>'),
    'phi3-chat': ('phi3', f'<|system|>\n{OLD_SYSTEM}<|end|><|user|>\n{SPAN}\nWhat is it?<|end|><|assistant|>\n'
                          'A red circle.<|end|>'),
}
END = {'internlm2-chat': '<|im_end|>', 'Hermes-2': '<|im_end|>', 'phi3-chat': '<|end|>', 'internvl2_5': '<|im_end|>'}


class _TokenizerPerFamily(dict):
    """Each family's tiny tokenizer, loaded on first use (Qwen3's needs transformers >= 4.51)."""

    def __init__(self, tiny_checkpoint):
        super().__init__()
        self.tiny_checkpoint = tiny_checkpoint

    def __missing__(self, family):
        self[family] = load_tokenizer(self.tiny_checkpoint(family))
        return self[family]


@pytest.fixture(scope='module')
def tokenizers(tiny_checkpoint):
    return _TokenizerPerFamily(tiny_checkpoint)


def supervised(tokenizer, ids, labels):
    """The supervised tokens, decoded, and checked to be the ids at their positions. Special tokens are written
    as themselves and the text between them decoded alone, since slow tokenizers (InternLM2's) space special
    tokens in decoding in ways of their own."""
    kept = [(i, label) for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(ids[i] == label for i, label in kept)
    special = set(tokenizer.all_special_ids)
    text, run = '', []
    for _, label in kept:
        if label in special:
            text += tokenizer.decode(run) + tokenizer.convert_ids_to_tokens(label)
            run = []
        else:
            run.append(label)
    return text + tokenizer.decode(run)


@pytest.mark.parametrize('name', sorted(SINGLE))
def test_whole_string_templates_give_the_ids_of_the_official_prompt(tokenizers, name):
    family, expected = SINGLE[name]
    tokenizer = tokenizers[family]
    encoded = TemplateEncoder(get_template(name), tokenizer).encode(
        None, [Turn('human', '<image>\nWhat is it?'), Turn('gpt', 'A red circle.')], [5])
    assert encoded.input_ids == tokenizer(expected)['input_ids']
    assert supervised(tokenizer, encoded.input_ids, encoded.labels) == 'A red circle.' + END[name]
    answer_ids = tokenizer('A red circle.' + END[name], add_special_tokens=False)['input_ids']
    assert encoded.labels[-len(answer_ids):] == answer_ids
    assert encoded.labels[:-len(answer_ids)] == [IGNORE_INDEX] * (len(encoded.labels) - len(answer_ids))


@pytest.mark.parametrize('family', ['qwen2', pytest.param('qwen3', marks=needs_qwen3), 'internlm2'])
def test_internvl2_5_tokenises_each_turn_and_masks_the_newline(tokenizers, family):
    tokenizer = tokenizers[family]
    turns = [Turn('human', '<image>\nWhat is it?'), Turn('gpt', 'A red circle.'),
             Turn('human', 'And its colour?'), Turn('gpt', 'red')]
    pieces = [f'<|im_start|>system\n{NEW_SYSTEM}<|im_end|>\n', f'<|im_start|>user\n{SPAN}\nWhat is it?<|im_end|>\n',
              '<|im_start|>assistant\nA red circle.<|im_end|>\n', '<|im_start|>user\nAnd its colour?<|im_end|>\n',
              '<|im_start|>assistant\nred<|im_end|>\n']
    bos = [tokenizer.bos_token_id] if family == 'internlm2' else []
    expected_ids = bos + [i for piece in pieces for i in tokenizer(piece, add_special_tokens=False)['input_ids']]
    encoded = TemplateEncoder(get_template('internvl2_5'), tokenizer).encode(None, turns, [5])
    assert encoded.input_ids == expected_ids
    assert supervised(tokenizer, encoded.input_ids, encoded.labels) == 'A red circle.<|im_end|>red<|im_end|>'
    newline = tokenizer('\n', add_special_tokens=False)['input_ids']
    assert encoded.input_ids[-1:] == newline and encoded.labels[-1] == IGNORE_INDEX


GPT_OSS_SYSTEM = ('You are InternVL, a large language model trained by Shanghai AI Laboratory.\nKnowledge cutoff: '
                  '2024-06\nCurrent date: 2025-08-06\n\nReasoning: low\n\n# Valid channels: final. Channel must be '
                  'included for every message.')


@needs_gpt_oss
def test_internvl3_5_gpt_oss_is_harmony_turn_by_turn_and_returns_after_the_last_answer(tokenizers):
    """The official preprocess_internvl3_5_gpt_oss: each turn tokenised alone; only `<|start|>assistant` of an answer
    is masked; `<|end|>` closes an answer a question follows, `<|return|>` the last one."""
    tokenizer = tokenizers['gpt_oss']
    turns = [Turn('human', '<image>\nWhat is it?'), Turn('gpt', 'A red circle.'),
             Turn('human', 'And its colour?'), Turn('gpt', 'red')]
    pieces = [f'<|start|>system<|message|>{GPT_OSS_SYSTEM}<|end|>',
              f'<|start|>user<|message|>{SPAN}\nWhat is it?<|end|>',
              '<|start|>assistant<|channel|>final<|message|>A red circle.<|end|>',
              '<|start|>user<|message|>And its colour?<|end|>',
              '<|start|>assistant<|channel|>final<|message|>red<|return|>']
    expected_ids = [i for piece in pieces for i in tokenizer(piece, add_special_tokens=False)['input_ids']]
    encoded = TemplateEncoder(get_template('internvl3_5_gpt_oss'), tokenizer).encode(None, turns, [5])
    assert encoded.input_ids == expected_ids
    assert supervised(tokenizer, encoded.input_ids, encoded.labels) == \
        '<|channel|>final<|message|>A red circle.<|end|><|channel|>final<|message|>red<|return|>'
    assert encoded.labels[-1] == tokenizer.convert_tokens_to_ids('<|return|>')


@needs_gpt_oss
def test_internvl3_5_gpt_oss_puts_thinking_in_the_analysis_channel(tokenizers):
    tokenizer = tokenizers['gpt_oss']
    encoder = TemplateEncoder(get_template('internvl3_5_gpt_oss'), tokenizer)
    turns = [Turn('human', 'Colour?'), Turn('gpt', '<think> It looks red. </think>\nred')]
    encoded = encoder.encode('Be brief.', turns, [])
    answer = ('<|channel|>analysis<|message|>It looks red.<|end|><|start|>assistant<|channel|>final<|message|>red'
              '<|return|>')
    pieces = ['<|start|>system<|message|>Be brief.<|end|>', '<|start|>user<|message|>Colour?<|end|>',
              '<|start|>assistant' + answer]
    assert encoded.input_ids == [i for piece in pieces for i in tokenizer(piece, add_special_tokens=False)['input_ids']]
    assert supervised(tokenizer, encoded.input_ids, encoded.labels) == answer
    prompt = encoder.encode(None, [Turn('human', 'Colour?')], [], add_generation_prompt=True)
    assert tokenizer.decode(prompt.input_ids).endswith('<|start|>user<|message|>Colour?<|end|><|start|>assistant')


def test_multi_turn_internlm2_chat_strips_messages_as_official_code(tokenizers):
    tokenizer = tokenizers['internlm2']
    turns = [Turn('human', '  <image>\nWhat is it?  '), Turn('gpt', ' A cat. \n'),
             Turn('human', 'Colour?'), Turn('gpt', 'black')]
    encoded = TemplateEncoder(get_template('internlm2_chat'), tokenizer).encode(None, turns, [5])
    expected = (f'<|im_start|>system\n{OLD_SYSTEM}<|im_end|><|im_start|>user\n{SPAN}\nWhat is it?<|im_end|>'
                '<|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nColour?<|im_end|>'
                '<|im_start|>assistant\nblack<|im_end|>')
    assert encoded.input_ids == tokenizer(expected)['input_ids']
    assert supervised(tokenizer, encoded.input_ids, encoded.labels) == 'A cat.<|im_end|>black<|im_end|>'


def test_hermes2_keeps_messages_unstripped(tokenizers):
    tokenizer = tokenizers['llama']
    turns = [Turn('human', 'Hi '), Turn('gpt', 'Yes ')]
    encoded = TemplateEncoder(get_template('hermes2'), tokenizer).encode(None, turns, [])
    expected = (f'<|im_start|>system\n{OLD_SYSTEM}<|im_end|><|im_start|>user\nHi <|im_end|>'
                '<|im_start|>assistant\nYes <|im_end|>')
    assert encoded.input_ids == tokenizer(expected)['input_ids']


def test_multi_image_spans_take_each_images_tile_count_in_order(tokenizers):
    tokenizer = tokenizers['qwen2']
    encoder = TemplateEncoder(get_template('internvl2_5'), tokenizer)
    turns = [Turn('human', 'Image-1: <image>\nImage-2: <image>\nSame?'), Turn('gpt', 'No')]
    encoded = encoder.encode(None, turns, [3, 7])
    user = ('<|im_start|>user\nImage-1: <img>' + '<IMG_CONTEXT>' * 3 + '</img>\nImage-2: <img>' + '<IMG_CONTEXT>' * 7
            + '</img>\nSame?<|im_end|>\n')
    expected = [i for piece in [f'<|im_start|>system\n{NEW_SYSTEM}<|im_end|>\n', user,
                                '<|im_start|>assistant\nNo<|im_end|>\n']
                for i in tokenizer(piece, add_special_tokens=False)['input_ids']]
    assert encoded.input_ids == expected
    assert len(encoded.image_ends) == 2 and encoded.input_ids[encoded.image_ends[1] - 1] == encoder.img_end_id
    context = encoded.input_ids.count(encoder.img_context_id)
    assert context == 10


def test_system_turn_overrides_the_template_system_prompt(tokenizers):
    tokenizer = tokenizers['qwen2']
    encoder = TemplateEncoder(get_template('internvl2_5'), tokenizer)
    encoded = encoder.encode('You are a cat.', [Turn('human', 'Hi'), Turn('gpt', 'Meow')], [])
    expected = [i for piece in ['<|im_start|>system\nYou are a cat.<|im_end|>\n', '<|im_start|>user\nHi<|im_end|>\n',
                                '<|im_start|>assistant\nMeow<|im_end|>\n']
                for i in tokenizer(piece, add_special_tokens=False)['input_ids']]
    assert encoded.input_ids == expected
    phi3 = TemplateEncoder(get_template('phi3-chat'), tokenizers['phi3']).encode(
        'Be brief.', [Turn('human', 'Hi'), Turn('gpt', 'Hello')], [])
    expected_phi3 = '<|system|>\nBe brief.<|end|><|user|>\nHi<|end|><|assistant|>\nHello<|end|>'
    assert phi3.input_ids == tokenizers['phi3'](expected_phi3)['input_ids']


def test_video_frames_are_written_as_official_frame_lines(tokenizers):
    from internvl_plugin.dataset.samples import expand_video
    tokenizer = tokenizers['internlm2']
    turns = expand_video([Turn('human', '<video>\nWhat happens?'), Turn('gpt', 'It rolls.')], 3)
    assert turns[0].text == 'Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\nWhat happens?'
    encoded = TemplateEncoder(get_template('internlm2-chat'), tokenizer).encode(None, turns, [5, 5, 5])
    expected = (f'<|im_start|>system\n{OLD_SYSTEM}<|im_end|><|im_start|>user\nFrame-1: {SPAN}\nFrame-2: {SPAN}\n'
                f'Frame-3: {SPAN}\nWhat happens?<|im_end|><|im_start|>assistant\nIt rolls.<|im_end|>')
    assert encoded.input_ids == tokenizer(expected)['input_ids']


def test_grounding_text_passes_through_untouched(tokenizers):
    tokenizer = tokenizers['qwen2']
    answer = '<ref>cat</ref><box>[[120, 340, 560, 780]]</box>'
    encoded = TemplateEncoder(get_template('internvl2_5'), tokenizer).encode(
        None, [Turn('human', 'Where is the cat?'), Turn('gpt', answer)], [])
    assert supervised(tokenizer, encoded.input_ids, encoded.labels) == answer + '<|im_end|>'


class _SlowView:
    """The same tokenizer seen as a slow one (no offsets): labels must come out the same."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.is_fast = False

    def __call__(self, text, **kwargs):
        assert 'return_offsets_mapping' not in kwargs
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.mark.parametrize('name,family', [('internlm2-chat', 'internlm2'), ('internvl2_5', 'qwen2'),
                                         ('phi3-chat', 'phi3')])
def test_slow_tokenizers_get_the_same_labels_from_prefix_lengths(tokenizers, name, family):
    turns = [Turn('human', '<image>\nWhat is it?'), Turn('gpt', 'A red circle.'), Turn('human', 'Sure?'),
             Turn('gpt', 'Yes, sure.')]
    fast = TemplateEncoder(get_template(name), tokenizers[family]).encode(None, turns, [4])
    slow = TemplateEncoder(get_template(name), _SlowView(tokenizers[family])).encode(None, turns, [4])
    assert slow.input_ids == fast.input_ids and slow.labels == fast.labels
    expected = f'A red circle.{END[name]}Yes, sure.{END[name]}'
    assert supervised(tokenizers[family], fast.input_ids, fast.labels) == expected


def test_unknown_template_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown template 'chatml'; expected one of \[.*'internvl2_5'"):
        get_template('chatml')


def test_an_xtuner_prompt_template_dict_is_refused_with_the_way_out():
    xtuner_internlm2_chat = {'SYSTEM': '<|im_start|>system\n{system}<|im_end|>\n', 'SUFFIX': '<|im_end|>'}
    with pytest.raises(ValueError, match=r"XTuner PROMPT_TEMPLATE dict.*pass a name such as 'internlm2-chat'"):
        get_template(xtuner_internlm2_chat)


def merging_tokenizer():
    """Bytes plus one merge, '\\n\\n' (Qwen's vocabulary has it), without pre-tokenisation: an answer opening with
    a newline merges with the newline that ends the prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from internvl_plugin.files import INTERNVL_SPECIAL_TOKENS
    special = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'] + INTERNVL_SPECIAL_TOKENS
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + len(special) + 1, special_tokens=special,
                                  show_progress=False, initial_alphabet=alphabet)
    backend.train_from_iterator(['\n\n\n\n'] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token='<|im_end|>', pad_token='<|endoftext|>',
                                   additional_special_tokens=special[1:])


def test_a_token_merging_prompt_and_answer_is_not_supervised_as_in_the_official_labels():
    tokenizer = merging_tokenizer()
    turns = [Turn('human', 'Hi'), Turn('gpt', '\nA red circle.')]
    fast = TemplateEncoder(get_template('internvl2_5'), tokenizer).encode('sys', turns, [])
    slow = TemplateEncoder(get_template('internvl2_5'), _SlowView(tokenizer)).encode('sys', turns, [])
    tokens = tokenizer.convert_ids_to_tokens(fast.input_ids)
    merged = tokens.index('ĊĊ')  # the prompt's last newline and the answer's first
    assert fast.labels[merged] == IGNORE_INDEX and fast.labels[merged + 1] != IGNORE_INDEX
    assert fast.labels == slow.labels  # the official counting: the prompt's tokens, merged one included, are masked
