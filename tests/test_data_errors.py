"""Bad training data: every problem as `file:line: what is wrong`, refused by default, skipped only when asked."""
import json
import logging

import pytest
from helpers import qa, save_image, write_jsonl

from internvl_plugin import InternVL_V1_5_Dataset
from internvl_plugin.dataset import DataError


@pytest.fixture
def folder(tmp_path):
    (tmp_path / 'images').mkdir()
    save_image(tmp_path / 'images' / 'ok.png', 64, 64)
    return tmp_path


def build(tiny_checkpoint, path, **kwargs):
    return InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), data_paths=[str(path)], **kwargs)


def turns(*pairs):
    return {'conversations': [{'from': role, 'value': value} for role, value in pairs]}


BAD_LINES = [
    ('{"conversations": [', r'invalid JSON \(Expecting value at column 20\)'),
    ('[1, 2]', 'expected a JSON object per sample, found list'),
    (qa(image='images/missing.png'), r'image .*images/missing.png does not exist'),
    (qa(image='images'), r'image .*images is a folder; expected an image file'),
    (qa('<image>\n<image>\nSame?', image='images/ok.png'), r'2 <image> placeholder\(s\) for 1 image\(s\)'),
    (qa('<image>\nWhat?'), r'1 <image> placeholder\(s\) for 0 image\(s\)'),
    ({'conversations': []}, '"conversations" is missing or empty'),
    ({'image': 'images/ok.png'}, '"conversations" is missing or empty'),
    (turns(('human', 'Hi'), ('human', 'Anyone?')), "turn 2 is from 'human' where 'gpt' was expected"),
    (turns(('human', 'Hi')), 'the conversation has no gpt answer'),
    (turns(('gpt', 'Hello')), "turn 1 is from 'gpt' where 'human' was expected"),
    (turns(('human', 'Hi'), ('bot', 'Hello')), "turn 2 has role 'bot'; expected 'human' or 'gpt'"),
    (turns(('human', 'Hi'), ('gpt', '  ')), r'turn 2 \(gpt\) is empty'),
    (turns(('human', 'Hi'), ('gpt', 'Look: <image>')),
     'gpt turn 2 holds an <image> or <video> placeholder'),
    ({**qa(), 'image': 'images/ok.png', 'video': 'a.mp4'}, 'the sample has both "image" and "video"'),
    ({**qa(image='images/ok.png'), 'width': 0, 'height': 10},
     r'width/height are 0/10; expected positive integers, one per image'),
    (qa('What is <IMG_CONTEXT>?', 'A token.'), r'turn 1 \(human\) holds <IMG_CONTEXT>, a token reserved for image'),
    (qa('Hi', 'See <img>here</img>'), r'turn 2 \(gpt\) holds <img>, a token reserved for image features'),
    ({'conversations': [{'from': 'system', 'value': 'Use </img>.'}, *qa('Hi', 'Hello')['conversations']]},
     r'the system turn holds </img>, a token reserved'),
]


@pytest.mark.parametrize('line,message', BAD_LINES, ids=[m[:30] for _, m in BAD_LINES])
def test_each_bad_line_is_refused_with_its_file_and_line(tiny_checkpoint, folder, line, message):
    path = write_jsonl(folder / 'data.jsonl', [qa('Hello', 'Hi'), line, qa('Bye', 'Bye')])
    with pytest.raises(DataError, match=rf'1 bad sample\(s\)[^\n]*\n.*data.jsonl:2: {message}'):
        build(tiny_checkpoint, path)


def test_many_problems_list_the_first_twenty_and_count_the_rest(tiny_checkpoint, folder):
    path = write_jsonl(folder / 'data.jsonl', [qa('Hello', 'Hi')] + ['not json'] * 25)
    with pytest.raises(DataError) as error:
        build(tiny_checkpoint, path)
    lines = str(error.value).splitlines()
    assert lines[0].startswith('25 bad sample(s) in the training data')
    assert lines[1].endswith('data.jsonl:2: invalid JSON (Expecting value at column 1)')
    assert lines[20].endswith('data.jsonl:21: invalid JSON (Expecting value at column 1)')
    assert lines[21] == '... and 5 more' and len(lines) == 22


def test_skip_bad_samples_builds_from_the_good_ones_and_counts_the_rest(tiny_checkpoint, folder, caplog):
    path = write_jsonl(folder / 'data.jsonl', [qa('Hello', 'Hi'), 'oops', qa(image='images/gone.png')])
    with caplog.at_level(logging.WARNING, logger='internvl_plugin'):
        ds = build(tiny_checkpoint, path, skip_bad_samples=True)
    assert len(ds) == 1 and len(ds.skipped_problems) == 2
    assert 'skipped 2 bad sample(s)' in caplog.text and 'data.jsonl:2: invalid JSON' in caplog.text


def test_missing_annotation_file_and_meta_entries(tiny_checkpoint, folder):
    with pytest.raises(DataError, match=r'nowhere.jsonl: annotation file does not exist'):
        build(tiny_checkpoint, folder / 'nowhere.jsonl')
    meta = folder / 'meta.json'
    meta.write_text(json.dumps({'set': {'root': 'images', 'annotation': 'missing.jsonl'}}))
    with pytest.raises(DataError, match=r'missing.jsonl: annotation file does not exist'):
        InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), meta_path=str(meta))
    meta.write_text(json.dumps({'set': {'annotation': 'a.jsonl', 'repeat': 2}}))
    with pytest.raises(DataError, match=r"meta.json: dataset 'set': unknown key\(s\) \['repeat'\]"):
        InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), meta_path=str(meta))
    meta.write_text(json.dumps({'set': {'root': 'images', 'annotaion': 'a.jsonl'}}))
    with pytest.raises(DataError) as error:
        InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), meta_path=str(meta))
    assert str(error.value) == f'{meta}: dataset \'set\': "annotaion" is a misspelling of "annotation"; rename the key'
    meta.write_text('{"set": {"annotation": "a.jsonl",\n "root": }}')
    with pytest.raises(DataError, match=r'meta.json:2: invalid JSON'):
        InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), meta_path=str(meta))


def test_malformed_json_list_names_the_line(tiny_checkpoint, folder):
    path = folder / 'data.json'
    path.write_text('[\n  {"conversations": []},\n  {"conversations": [}\n]')
    with pytest.raises(DataError, match=r'data.json:3: invalid JSON'):
        build(tiny_checkpoint, path)


def test_corrupt_image_fails_at_load_with_file_line_and_never_resamples(tiny_checkpoint, folder, caplog):
    (folder / 'images' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    path = write_jsonl(folder / 'data.jsonl', [qa(image='images/broken.png'), qa('Hello', 'Hi')])
    ds = build(tiny_checkpoint, path)
    with pytest.raises(DataError, match=r'data.jsonl:1: cannot open image .*broken.png \(UnidentifiedImageError'):
        ds[0]
    skipping = build(tiny_checkpoint, path, skip_bad_samples=True)
    with caplog.at_level(logging.WARNING, logger='internvl_plugin'):
        item = skipping[0]
    assert item['pixel_values'].shape[0] == 0 and 'data.jsonl:1: cannot open image' in caplog.text
    assert 'using the next sample instead' in caplog.text


def test_truncated_image_fails_when_decoded(tiny_checkpoint, folder):
    good = (folder / 'images' / 'ok.png').read_bytes()
    (folder / 'images' / 'cut.png').write_bytes(good[:len(good) // 2])
    ds = build(tiny_checkpoint, write_jsonl(folder / 'data.jsonl', [qa(image='images/cut.png')]))
    with pytest.raises(DataError, match=r'data.jsonl:1: cannot decode image .*cut.png'):
        ds[0]


def test_unreadable_video_fails_at_load(tiny_checkpoint, folder):
    (folder / 'clip.mp4').write_bytes(b'not a video')
    record = {'video': 'clip.mp4', **turns(('human', 'What?'), ('gpt', 'Nothing'))}
    ds = build(tiny_checkpoint, write_jsonl(folder / 'data.jsonl', [record]))
    with pytest.raises(DataError, match=r'data.jsonl:1: cannot open video .*clip.mp4'):
        ds[0]


def test_mismatched_xtuner_lists_are_refused(tiny_checkpoint, folder):
    path = write_jsonl(folder / 'data.jsonl', [qa('Hello', 'Hi')])
    with pytest.raises(DataError, match=r'image_folders has 2 entries for 1 data_paths'):
        build(tiny_checkpoint, path, image_folders=['a', 'b'])


@pytest.mark.parametrize('tail', ['\nsome trailing text', '\n[{"conversations": []}]', ' ]'])
def test_text_after_a_json_list_is_refused_with_its_line(tiny_checkpoint, folder, tail):
    path = folder / 'data.json'
    path.write_text(json.dumps([qa(), qa()], indent=1) + tail)
    lines = path.read_text().count('\n') + 1
    with pytest.raises(DataError, match=rf"data.json:{lines}: text after the JSON list's closing \]"):
        build(tiny_checkpoint, path)


def test_upper_case_json_is_a_list_and_non_utf8_lines_are_named(tiny_checkpoint, folder):
    listed = folder / 'DATA.JSON'
    listed.write_text(json.dumps([qa('Hi', 'Hello'), qa('Hello', 'Hi')], indent=1))
    assert len(build(tiny_checkpoint, listed)) == 2
    latin = folder / 'latin.jsonl'
    latin.write_bytes(json.dumps(qa('Hi', 'Hello')).encode() + b'\n' + '{"x": "caf\xe9"}'.encode('latin-1') + b'\n')
    with pytest.raises(DataError, match=r'latin.jsonl:2: not UTF-8 text \(byte 0xe9 at column 11\)'):
        build(tiny_checkpoint, latin)


@pytest.mark.parametrize('repeat', [float('nan'), float('inf'), 1e12, -1, True, '2'])
def test_repeat_factors_must_be_finite_numbers_in_range(tiny_checkpoint, folder, repeat):
    path = write_jsonl(folder / 'data.jsonl', [qa()])
    with pytest.raises(DataError, match=r'repeat_times for .*data.jsonl is .*; expected a number from 0 to 1000'):
        build(tiny_checkpoint, path, repeat_times=[repeat])
    meta = folder / 'meta.json'
    meta.write_text(json.dumps({'set': {'annotation': str(path), 'repeat_time': repeat}}))
    with pytest.raises(DataError, match=r"meta.json: dataset 'set': repeat_time is .*; expected a number from 0"):
        InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), meta_path=str(meta))


@pytest.mark.parametrize('key,value,expected', [
    ('max_dynamic_patch', 0, 'a whole number >= 1'), ('max_dynamic_patch', -3, 'a whole number >= 1'),
    ('max_dynamic_patch', '12', 'a whole number >= 1'), ('min_dynamic_patch', 1.5, 'a whole number >= 1'),
    ('data_augment', 'false', 'true or false'), ('use_thumbnail', 1, 'true or false')])
def test_tiling_and_augmentation_settings_are_checked(tiny_checkpoint, folder, key, value, expected):
    path = write_jsonl(folder / 'data.jsonl', [qa()])
    meta = folder / 'meta.json'
    meta.write_text(json.dumps({'set': {'annotation': str(path), key: value}}))
    with pytest.raises(DataError, match=rf"meta.json: dataset 'set': {key} is {value!r}; expected {expected}"):
        InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), meta_path=str(meta))
    with pytest.raises(DataError, match=rf'InternVL_V1_5_Dataset: {key} is {value!r}; expected {expected}'):
        build(tiny_checkpoint, path, **{key: value})


def test_augmentation_leaves_text_only_samples_alone(tiny_checkpoint, folder):
    path = write_jsonl(folder / 'data.jsonl', [qa('Hello', 'Hi'), qa(image='images/ok.png')])
    ds = build(tiny_checkpoint, path, data_augment=True)
    text_only, with_image = ds.load(0), ds.load(1)
    assert text_only['pixel_values'].shape[0] == 0 and with_image['pixel_values'].shape[0] >= 1


def test_media_outside_the_root_are_warned_about_once_per_dataset(tiny_checkpoint, folder, caplog):
    save_image(folder / 'elsewhere.png', 64, 64)
    path = write_jsonl(folder / 'images' / 'data.jsonl', [qa(image='ok.png'), qa(image='../elsewhere.png'),
                                                          qa(image='../elsewhere.png')])
    with caplog.at_level(logging.WARNING, logger='internvl_plugin'):
        dataset = build(tiny_checkpoint, path)
    assert len(dataset) == 3
    warnings = [r.getMessage() for r in caplog.records if 'outside the dataset' in r.getMessage()]
    assert len(warnings) == 1
    assert "2 media path(s) lead outside the dataset's root" in warnings[0]
    assert f'the first: {path}:2: ' in warnings[0] and warnings[0].endswith('../elsewhere.png')
