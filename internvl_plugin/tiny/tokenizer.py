"""Tiny tokenizers built offline, in each family's real form, with its chat tokens and InternVL's special tokens:
byte-level BPE (tokenizer.json) for Qwen2 / Qwen3 / GPT-OSS / Phi3 / Llama, a SentencePiece tokenizer.model for
InternLM2."""
import io
from typing import Dict, List

from ..files import INTERNVL_SPECIAL_TOKENS

# Per family: special tokens in id order, the BOS token the tokenizer prepends (None: none), eos and pad.
FAMILY_TOKENS: Dict[str, Dict] = {
    'qwen2': {'special': ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
              'bos': None, 'eos': '<|im_end|>', 'pad': '<|endoftext|>'},
    # Qwen3's vocabulary adds tool and thinking tokens before InternVL's (<IMG_CONTEXT> is 151671 there, 151667 with
    # Qwen2.5's): the order moves InternVL's token ids, which nothing may hard-code.
    'qwen3': {'special': ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<tool_call>', '</tool_call>', '<think>',
                          '</think>'],
              'bos': None, 'eos': '<|im_end|>', 'pad': '<|endoftext|>'},
    'phi3': {'special': ['<unk>', '<s>', '</s>', '<|endoftext|>', '<|system|>', '<|user|>', '<|assistant|>', '<|end|>'],
             'bos': '<s>', 'eos': '<|endoftext|>', 'pad': '<|endoftext|>'},
    'llama': {'special': ['<unk>', '<|startoftext|>', '<|endoftext|>', '<|im_start|>', '<|im_end|>'],
              'bos': '<|startoftext|>', 'eos': '<|endoftext|>', 'pad': '<unk>'},
}
FAMILY_TOKENS['qwen3_moe'] = FAMILY_TOKENS['qwen3']  # the same vocabulary
# GPT-OSS's harmony tokens (o200k_harmony); no BOS is prepended, <|return|> ends an answer.
FAMILY_TOKENS['gpt_oss'] = {'special': ['<|startoftext|>', '<|endoftext|>', '<|return|>', '<|constrain|>',
                                        '<|channel|>', '<|start|>', '<|end|>', '<|message|>', '<|call|>'],
                            'bos': None, 'eos': '<|return|>', 'pad': '<|endoftext|>'}

_CORPUS = [
    'You are a helpful assistant. What is in the image? Describe the picture in detail.',
    'The image shows a red circle, a green square, a blue triangle and a yellow star on a white background.',
    'What colour is the shape? What shape is it? Answer with one word. red green blue yellow purple orange',
    'circle square triangle star cross diamond left right top bottom centre center small large',
    'Please describe the image shortly. How many objects are there? There are 0 1 2 3 4 5 6 7 8 9 10 objects.',
    'The cat sits on the mat. A photo of a dog running in the park. The astronaut is smiling.',
    'Frame-1: Frame-2: Image-1: Image-2: user assistant system human gpt',
    '你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。',
    '你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。',
    'Yes, no, maybe. The answer is: [[120, 340, 560, 780]] coordinates of the box.',
]


# InternLM2's chat tokens, in the order of their ids at the end of its SentencePiece vocabulary (92538-92543).
INTERNLM2_CHAT_TOKENS = ['<|plugin|>', '<|interpreter|>', '<|action_end|>', '<|action_start|>', '<|im_end|>',
                         '<|im_start|>']


def build_tiny_tokenizer(family: str, vocab_size: int = 1000, internvl_tokens: bool = True):
    """A tokenizer trained in milliseconds; saves and loads offline like the family's real one.

    Without `internvl_tokens` it is a plain LLM tokenizer, as an LLM checkpoint used to assemble a new InternVL has."""
    if family == 'internlm2':
        return build_tiny_internlm2_tokenizer(internvl_tokens)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    spec = FAMILY_TOKENS[family]
    special: List[str] = spec['special'] + (INTERNVL_SPECIAL_TOKENS if internvl_tokens else [])
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
    bos = spec['bos']
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f'{bos} $A', pair=f'{bos} $A {bos} $B', special_tokens=[(bos, tokenizer.token_to_id(bos))])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    named = (bos, spec['eos'], spec['pad'], '<unk>')
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=spec['eos'],
                                   pad_token=spec['pad'], unk_token='<unk>' if '<unk>' in special else None,
                                   additional_special_tokens=[t for t in special if t not in named])
    fast.model_max_length = 8192
    return fast


def build_tiny_internlm2_tokenizer(internvl_tokens: bool = True):
    """InternLM2's form: a SentencePiece BPE model with byte fallback (newlines and rare characters as bytes),
    <unk> <s> </s> as ids 0-2, the chat tokens as user-defined pieces, InternVL's tokens added after the
    vocabulary; saved as tokenizer.model with the official tokenizer_config.json (remote class names in auto_map)."""
    import sentencepiece
    from ..internlm2_tokenizer import InternLM2Tokenizer
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=proto, vocab_size=600, hard_vocab_limit=False,
        model_type='bpe', byte_fallback=True, character_coverage=1.0, split_digits=True, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, user_defined_symbols=INTERNLM2_CHAT_TOKENS, normalization_rule_name='identity',
        remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True, minloglevel=2)
    added = INTERNLM2_CHAT_TOKENS + (INTERNVL_SPECIAL_TOKENS if internvl_tokens else [])
    tokenizer = InternLM2Tokenizer(sp_model_proto=proto.getvalue(), additional_special_tokens=added)
    tokenizer.model_max_length = 8192
    return tokenizer
