"""InternLM2's tokenizer read from its SentencePiece model, without the checkpoint's remote code."""
import json
import os
import shutil

import pytest
import sentencepiece

from internvl_plugin.files import load_tokenizer
from internvl_plugin.internlm2_tokenizer import InternLM2Tokenizer
from internvl_plugin.tiny.tokenizer import INTERNLM2_CHAT_TOKENS

TEXTS = [
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|><|im_start|>user\n<img><IMG_CONTEXT></img>\n'
    'What colour is the shape?<|im_end|><|im_start|>assistant\nred<|im_end|>',
    '  leading spaces, 12345 digits and 你好 (bytes)\n\nnew lines  ',
    'Frame-1: <img><IMG_CONTEXT></img>\nFrame-2: <img><IMG_CONTEXT></img>\n<ref>cat</ref><box>[[1, 2, 3, 4]]</box>',
]


@pytest.fixture(scope='module')
def folder(tiny_checkpoint):
    return tiny_checkpoint('internlm2')


def sentencepiece_ids(folder: str, text: str, special: list) -> list:
    """What the official InternLM2Tokenizer computes: BOS, then each run between special tokens through
    SentencePiece, the special tokens by their ids."""
    processor = sentencepiece.SentencePieceProcessor()
    processor.Load(os.path.join(folder, 'tokenizer.model'))
    with open(os.path.join(folder, 'tokenizer_config.json'), encoding='utf-8') as f:
        added = {entry['content']: int(i) for i, entry in json.load(f)['added_tokens_decoder'].items()}
    ids, run, position = [processor.bos_id()], '', 0
    while position < len(text):
        token = next((t for t in special if text.startswith(t, position)), None)
        if token is None:
            run += text[position]
            position += 1
            continue
        ids += processor.encode(run) if run else []
        ids.append(added[token])
        run, position = '', position + len(token)
    return ids + (processor.encode(run) if run else [])


def test_the_tiny_checkpoint_has_the_released_layout(folder):
    assert os.path.isfile(os.path.join(folder, 'tokenizer.model'))
    assert not os.path.exists(os.path.join(folder, 'tokenizer.json'))
    with open(os.path.join(folder, 'tokenizer_config.json'), encoding='utf-8') as f:
        config = json.load(f)
    assert config['tokenizer_class'] == 'InternLM2Tokenizer'
    assert config['auto_map']['AutoTokenizer'][0] == 'tokenization_internlm2.InternLM2Tokenizer'
    assert config['add_bos_token'] is True and config['add_eos_token'] is False


@pytest.mark.parametrize('text', TEXTS)
def test_ids_equal_the_official_sentencepiece_procedure(folder, text):
    tokenizer = load_tokenizer(folder)
    assert isinstance(tokenizer, InternLM2Tokenizer)
    special = sorted(INTERNLM2_CHAT_TOKENS + ['<img>', '</img>', '<IMG_CONTEXT>', '<ref>', '</ref>', '<box>',
                                              '</box>', '<s>', '</s>', '<unk>'], key=len, reverse=True)
    assert tokenizer(text)['input_ids'] == sentencepiece_ids(folder, text, special)


def test_loading_never_runs_the_checkpoints_tokenizer_code(folder, tmp_path):
    copy = tmp_path / 'ckpt'
    shutil.copytree(folder, copy)
    for name in ('tokenization_internlm2.py', 'tokenization_internlm2_fast.py'):
        (copy / name).write_text("raise RuntimeError('remote code ran')\n")
    tokenizer = load_tokenizer(str(copy))
    assert isinstance(tokenizer, InternLM2Tokenizer)
    assert tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>') == load_tokenizer(folder).convert_tokens_to_ids(
        '<IMG_CONTEXT>')


def test_saving_keeps_the_official_identity_and_the_same_ids(folder, tmp_path):
    tokenizer = load_tokenizer(folder)
    tokenizer.save_pretrained(str(tmp_path))
    with open(tmp_path / 'tokenizer_config.json', encoding='utf-8') as f:
        config = json.load(f)
    assert config['tokenizer_class'] == 'InternLM2Tokenizer' and 'AutoTokenizer' in config['auto_map']
    with open(os.path.join(folder, 'tokenizer.model'), 'rb') as a, open(tmp_path / 'tokenizer.model', 'rb') as b:
        assert a.read() == b.read()
    again = load_tokenizer(str(tmp_path))
    assert [again(t)['input_ids'] for t in TEXTS] == [tokenizer(t)['input_ids'] for t in TEXTS]
    assert len(again) == len(tokenizer)


def test_decoding_an_answer_skips_special_tokens(folder):
    tokenizer = load_tokenizer(folder)
    ids = tokenizer('<|im_start|>assistant\nA red circle.<|im_end|>')['input_ids']
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == 'assistant\nA red circle.'


def test_a_tokenizer_naming_other_remote_code_is_refused_unless_trusted(tiny_checkpoint, tmp_path):
    copy = tmp_path / 'ckpt'
    shutil.copytree(tiny_checkpoint('qwen2'), copy)
    config_path = copy / 'tokenizer_config.json'
    config = json.loads(config_path.read_text())
    config['auto_map'] = {'AutoTokenizer': ['tokenization_custom.CustomTokenizer', None]}
    config_path.write_text(json.dumps(config))
    (copy / 'tokenization_custom.py').write_text("open(__file__ + '.ran', 'w').close()\n")
    with pytest.raises(ValueError, match=r'tokenizer_config.json: auto_map names remote code \(tokenization_custom.py '
                                         r'in .*\) that loading this tokenizer would run; pass trust_remote_code=True'):
        load_tokenizer(str(copy))
    from internvl_plugin import InternVL_V1_5, InternVL_V1_5_Dataset
    with pytest.raises(ValueError, match='auto_map names remote code'):
        InternVL_V1_5(str(copy), torch_dtype='float32')
    with pytest.raises(ValueError, match='auto_map names remote code'):
        InternVL_V1_5_Dataset(model_path=str(copy), data_paths=[str(tmp_path / 'unused.jsonl')])
    assert not (copy / 'tokenization_custom.py.ran').exists()
