"""tools/check_data.py: the report, the exit status, --decode, --write-length, and config input."""
import json
import os
import subprocess
import sys

import pytest
from helpers import qa, save_image, write_jsonl

from internvl_plugin import InternVL_V1_5_Dataset
from internvl_plugin.dataset.check import check_dataset, dataset_kwargs, write_lengths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'check_data.py'), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def data(tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    save_image(images / 'wide.png', 900, 450)
    save_image(images / 'square.png', 448, 448)
    good = images / 'square.png'
    (images / 'cut.png').write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    write_jsonl(tmp_path / 'a.jsonl', [qa(image='wide.png'), qa(image='square.png'), qa('Hello', 'Hi'),
                                       qa(image='cut.png'), '{broken', qa(image='nowhere.png')])
    (tmp_path / 'meta.json').write_text(json.dumps({'photos': {'root': str(images), 'annotation': 'a.jsonl'}}))
    return tmp_path


def test_report_lists_counts_tiles_percentiles_and_every_problem(tiny_checkpoint, data):
    result = run_tool(data / 'meta.json', '--model-path', tiny_checkpoint())
    assert result.returncode == 1, result.stderr
    out = result.stdout
    # wide: 2x1 + thumbnail (the checkpoint's max 12); square: 1; cut.png's header still gives its size.
    assert 'photos (' in out and '4 usable samples (text 1, image 3, multi-image 0, video 0); 3 images, 0 videos, ' \
                                 '5 tiles' in out
    assert 'p50' in out and 'p99' in out and '\n  total ' in out
    assert 'samples over max_length 8192: 0' in out
    assert 'problems: 2' in out
    assert f"{data / 'a.jsonl'}:5: invalid JSON" in out
    assert f"{data / 'a.jsonl'}:6: image {data / 'images' / 'nowhere.png'} does not exist" in out


def test_decode_finds_images_that_only_fail_when_decoded(tiny_checkpoint, data):
    result = run_tool(data / 'meta.json', '--model-path', tiny_checkpoint(), '--decode')
    assert 'problems: 3' in result.stdout
    assert f"{data / 'a.jsonl'}:4: cannot decode image {data / 'images' / 'cut.png'}" in result.stdout


def test_clean_data_exits_zero_and_reports_over_length(tiny_checkpoint, data):
    write_jsonl(data / 'clean.jsonl', [qa(image='images/wide.png'), qa('Hello', 'Hi')])
    result = run_tool(data / 'clean.jsonl', '--model-path', tiny_checkpoint(), '--max-length', 500)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'samples over max_length 500: 1' in result.stdout and 'problems: 0' in result.stdout


def test_over_long_videos_are_said_to_take_fewer_frames(tiny_checkpoint, tmp_path):
    (tmp_path / 'frames').mkdir()
    for i in range(10):
        save_image(tmp_path / 'frames' / f'{i:03d}.png', 80, 60, seed=i)
    path = write_jsonl(tmp_path / 'v.jsonl', [qa('<video>\nColour?', 'red', video='frames'), qa('Hello', 'Hi')])
    result = run_tool(path, '--model-path', tiny_checkpoint(), '--max-length', 1000)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ('samples over max_length 1000: 1 (videos among them: 1, which train with fewer frames until they fit)'
            in result.stdout.splitlines())


def test_write_length_stores_exact_totals_that_the_dataset_then_uses(tiny_checkpoint, data):
    path = write_jsonl(data / 'clean.jsonl', [qa(image='images/wide.png'), qa(image='images/square.png'),
                                              qa('Hello there', 'Hi')])
    result = run_tool(path, '--model-path', tiny_checkpoint(), '--write-length')
    assert result.returncode == 0 and f'wrote "length" fields to {path}' in result.stdout
    records = [json.loads(line) for line in open(path)]
    ds = InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), data_paths=[path])
    assert [r['length'] for r in records] == [len(ds[i]['input_ids']) for i in range(3)]
    assert ds.modality_length == [records[0]['length'], records[1]['length'], -records[2]['length']]


def test_a_training_config_is_checked_with_its_own_dataset_settings(tiny_checkpoint, data):
    path = write_jsonl(data / 'clean.jsonl', [qa(image='images/wide.png')])
    config = data / 'config.py'
    config.write_text('from internvl_plugin import InternVL_V1_5_Dataset\n\n'
                      'train_dataloader = dict(dataset=dict(\n'
                      f'    type=InternVL_V1_5_Dataset, model_path={tiny_checkpoint()!r}, data_paths=[{path!r}],\n'
                      '    max_dynamic_patch=1, max_length=2048))\n')
    kwargs = dataset_kwargs([str(config)], {})
    assert kwargs['max_dynamic_patch'] == 1 and kwargs['type'] is InternVL_V1_5_Dataset
    report = check_dataset(kwargs)
    assert report.sources[0].tiles == 1 and report.max_length == 2048 and not report.problems
    assert run_tool(config).returncode == 0


def _pairs(data) -> str:
    good = {'image': 'square.png', 'question': '<image>\nWhat colour?', 'chosen': 'Red.', 'rejected': 'Blue.'}
    return str(write_jsonl(data / 'pairs.jsonl', [good, dict(good, rejected='Red.'), dict(good, chosen='')]))


def test_preference_pairs_are_checked_with_the_preference_dataset(tiny_checkpoint, data):
    """A preference config is checked with its PreferenceDataset, and files with --preference: bad pairs are
    problems naming file:line; read as SFT lines, each says it is a pair."""
    pairs = _pairs(data)
    config = data / 'mpo.py'
    config.write_text('from internvl_plugin import PreferenceDataset\n\n'
                      'train_dataloader = dict(dataset=dict(\n'
                      f'    type=PreferenceDataset, model_path={tiny_checkpoint()!r}, data_paths=[{pairs!r}],\n'
                      f'    image_folders=[{str(data / "images")!r}], max_length=2048))\n')
    for args in ((config,), (pairs, '--model-path', tiny_checkpoint(), '--image-folders', data / 'images',
                             '--preference')):
        result = run_tool(*args)
        assert result.returncode == 1, result.stderr
        assert '1 usable samples (text 0, image 1, multi-image 0, video 0); 1 images' in result.stdout
        assert f'{pairs}:2: "chosen" and "rejected" are the same text' in result.stdout
        assert f'{pairs}:3: "chosen" is \'\'; expected the preferred answer as non-empty text' in result.stdout
        assert 'problems: 2' in result.stdout
    result = run_tool(pairs, '--model-path', tiny_checkpoint(), '--image-folders', data / 'images')
    assert result.returncode == 1 and 'every sample of' in result.stderr
    assert result.stderr.count('(this line is a preference pair: question / chosen / rejected; PreferenceDataset '
                               'reads those)') == 3
    assert result.stderr.strip().splitlines()[-1] == 'check_data: the lines are preference pairs: add --preference'



def test_a_config_whose_dataset_is_not_an_internvl_one_is_refused(data):
    config = data / 'other.py'
    config.write_text("train_dataloader = dict(dataset=dict(type='mmengine.ConcatDataset', datasets=[]))\n")
    with pytest.raises(ValueError, match=r'other.py: train_dataloader.dataset is a ConcatDataset; expected one of '
                                         r'InternVL_V1_5_Dataset, PreferenceDataset'):
        dataset_kwargs([str(config)], {})


def test_missing_meta_annotation_is_an_error_line(tiny_checkpoint, data):
    (data / 'meta.json').write_text(json.dumps({'x': {'root': 'images', 'annotation': 'gone.jsonl'}}))
    result = run_tool(data / 'meta.json', '--model-path', tiny_checkpoint())
    assert result.returncode == 1 and 'gone.jsonl: annotation file does not exist' in result.stderr


def test_image_tokens_written_in_the_text_are_reported_and_decode_still_reports(tiny_checkpoint, tmp_path):
    path = write_jsonl(tmp_path / 'a.jsonl', [qa('Hello', 'Hi'), qa('What is <IMG_CONTEXT>?', 'A token.')])
    result = run_tool(path, '--model-path', tiny_checkpoint(), '--decode')
    assert result.returncode == 1, result.stderr
    assert f'{path}:2: turn 1 (human) holds <IMG_CONTEXT>, a token reserved for image features' in result.stdout
    assert '1 usable samples' in result.stdout


def test_meta_files_with_a_byte_order_mark_single_samples_and_meta_lists_are_routed_right(tiny_checkpoint, tmp_path):
    path = write_jsonl(tmp_path / 'a.jsonl', [qa('Hello', 'Hi')])
    meta = tmp_path / 'meta.json'
    meta.write_text('\ufeff' + json.dumps({'set': {'root': str(tmp_path), 'annotation': str(path)}}), encoding='utf-8')
    result = run_tool(meta, '--model-path', tiny_checkpoint())
    assert result.returncode == 0 and 'set (' in result.stdout, result.stdout + result.stderr
    single = tmp_path / 'one.json'
    single.write_text(json.dumps(qa('Hello', 'Hi')))
    result = run_tool(single, '--model-path', tiny_checkpoint())
    assert result.returncode == 1 and f'{single}:1: expected a JSON list of samples' in result.stderr
    listed = tmp_path / 'list.json'
    listed.write_text(json.dumps([{'root': str(tmp_path), 'annotation': str(path)}]))
    result = run_tool(listed, '--model-path', tiny_checkpoint())
    assert result.returncode == 1
    assert f"check_data: error: {listed}: a list of dataset entries; InternVL's meta JSON is one object" \
        in result.stderr


def test_a_dataset_whose_every_line_is_bad_lists_the_problems(tiny_checkpoint, tmp_path):
    path = write_jsonl(tmp_path / 'a.jsonl', ['{broken', qa('<image>\nWhat?', 'A.')])
    result = run_tool(path, '--model-path', tiny_checkpoint())
    assert result.returncode == 1
    assert 'the dataset is empty: every sample of' in result.stderr and 'is bad (2)' in result.stderr
    assert f'{path}:1: invalid JSON' in result.stderr and f'{path}:2: 1 <image> placeholder(s)' in result.stderr


def test_write_length_keeps_line_structure_mode_and_symlinks(tiny_checkpoint, tmp_path):
    records = [json.dumps(qa('Hello', 'Hi')), json.dumps(qa('How are you?', 'Fine.'))]
    target = tmp_path / 'store' / 'a.jsonl'
    target.parent.mkdir()
    target.write_bytes(('\ufeff' + records[0] + '\r\n\r\n' + records[1] + '\r\n').encode('utf-8'))
    os.chmod(target, 0o664)
    link = tmp_path / 'a.jsonl'
    link.symlink_to(target)
    result = run_tool(link, '--model-path', tiny_checkpoint(), '--write-length')
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert oct(os.stat(target).st_mode & 0o777) == '0o664'
    raw = target.read_bytes().decode('utf-8')
    assert raw.startswith('\ufeff') and raw.count('\r\n') == 3 and '\r\n\r\n' in raw
    lines = [line for line in raw.lstrip('\ufeff').split('\r\n') if line]
    assert [json.loads(line)['length'] > 0 for line in lines] == [True, True]
    assert not [name for name in os.listdir(target.parent) if name.endswith('.tmp')]


def test_written_lengths_name_their_settings_and_the_dataset_counts_stale_ones_again(tiny_checkpoint, tmp_path,
                                                                                     caplog):
    save_image(tmp_path / 'wide.png', 1800, 450)
    path = write_jsonl(tmp_path / 'a.jsonl', [qa(image='wide.png'), qa('Hello', 'Hi'), qa(image='wide.png')])
    kwargs = dict(model_path=tiny_checkpoint(), data_paths=[path], max_dynamic_patch=6)
    write_lengths(check_dataset(kwargs))
    records = [json.loads(line) for line in open(path)]
    settings = InternVL_V1_5_Dataset(**kwargs).length_settings(InternVL_V1_5_Dataset(**kwargs).sources[0])
    assert settings.startswith('internvl2_5 tokenizer ') and settings.endswith('448px x0.5 tiles 1-6 + thumbnail, '
                                                                                '32 frames')
    assert [record['length_for'] for record in records] == [settings] * 3
    written = [record['length'] for record in records]

    records[0]['length'] = 777       # a count for these very settings is taken as it is
    write_jsonl(path, records)
    assert InternVL_V1_5_Dataset(**kwargs).modality_length == [777, -written[1], written[2]]

    fewer_tiles = {**kwargs, 'max_dynamic_patch': 2}
    expected = InternVL_V1_5_Dataset(**{**fewer_tiles, 'data_paths': [write_jsonl(
        tmp_path / 'plain.jsonl', [qa(image='wide.png'), qa('Hello', 'Hi'), qa(image='wide.png')])]}).modality_length
    with caplog.at_level('WARNING', logger='internvl_plugin'):
        recounted = InternVL_V1_5_Dataset(**fewer_tiles).modality_length
    assert recounted == expected and expected[0] < written[0]
    assert [record.getMessage() for record in caplog.records if record.name == 'internvl_plugin'] == [
        f'{path}: 3 line(s) carry a "length" written for other settings (the first: line 1); they are counted '
        f'again for "{settings.replace("tiles 1-6", "tiles 1-2")}". Run tools/check_data.py --write-length to '
        'store the new ones']
