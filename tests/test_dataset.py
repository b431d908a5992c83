"""InternVL_V1_5_Dataset end to end on tiny checkpoints: sources, sample kinds, lengths, the length policy, collate."""
import json
import logging
import os
import random

import numpy as np
import pytest
import torch
from helpers import qa, save_image, write_jsonl
from PIL import Image

from internvl_plugin import InternVL_V1_5, InternVL_V1_5_Dataset, internvl_collate_fn
from internvl_plugin.dataset.internvl_dataset import LINES_PER_TASK
from internvl_plugin.dataset.sources import DataError, repeat_indices

CONTEXT = '<IMG_CONTEXT>'


def dataset(tiny_checkpoint, family='qwen2', **kwargs):
    return InternVL_V1_5_Dataset(model_path=tiny_checkpoint(family), **kwargs)


def n_context(ds, item):
    return int((item['input_ids'] == ds.tokenizer.convert_tokens_to_ids(CONTEXT)).sum())


# ---- repeat factors ---------------------------------------------------------------------------------------------

def test_fractional_repeat_gives_whole_copies_plus_a_seeded_fraction():
    indices = repeat_indices(10, 3.5, seed=0)
    counts = np.bincount(indices, minlength=10)
    assert len(indices) == 35 and sorted(set(counts.tolist())) == [3, 4] and (counts == 4).sum() == 5
    assert np.array_equal(indices, repeat_indices(10, 3.5, seed=0))
    assert not np.array_equal(indices, repeat_indices(10, 3.5, seed=1))


def test_repeat_below_one_keeps_a_fixed_subset_and_rounds_half_up():
    half = repeat_indices(7, 0.5, seed=0)
    assert len(half) == 4 and len(set(half.tolist())) == 4      # floor(3.5 + 0.5) = 4 distinct samples
    assert len(repeat_indices(10, 0.25, seed=0)) == 3           # floor(2.5 + 0.5)
    assert len(repeat_indices(10, 0, seed=0)) == 0
    assert repeat_indices(4, 2, seed=0).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


# ---- sources ---------------------------------------------------------------------------------------------------

@pytest.fixture
def photo_data(tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    save_image(images / 'wide.png', 900, 450, seed=1)
    save_image(images / 'square.png', 448, 448, seed=2)
    return tmp_path


def test_meta_json_and_xtuner_lists_in_one_dataset(tiny_checkpoint, photo_data):
    write_jsonl(photo_data / 'a.jsonl', [qa(image='wide.png'), qa(image='square.png')])
    with open(photo_data / 'b.json', 'w') as f:
        json.dump([qa('Hello', 'Hi'), qa('How are you?', 'Fine')], f, indent=2)
    meta = {'photos': {'root': str(photo_data / 'images'), 'annotation': 'a.jsonl', 'repeat_time': 1.5,
                       'max_dynamic_patch': 2}}
    with open(photo_data / 'meta.json', 'w') as f:
        json.dump(meta, f)
    ds = dataset(tiny_checkpoint, meta_path=str(photo_data / 'meta.json'), data_paths=[str(photo_data / 'b.json')],
                 repeat_times=[2])
    assert ds.source_counts == {'photos': 3, 'b.json': 4} and len(ds) == 7
    wide = ds[0]
    # 900x450 is ratio 2: with the meta's budget of 2 tiles it is 2x1, plus the thumbnail.
    assert wide['pixel_values'].shape == (3, 3, 448, 448) and wide['pixel_values'].dtype == torch.uint8
    assert n_context(ds, wide) == 3 * 256
    assert ds.where(3).endswith('b.json:2')   # the JSON list's first record starts on line 2
    assert ds.where(5).endswith('b.json:2')   # the second copy of the same record


def test_image_folders_none_means_next_to_the_annotation_file(tiny_checkpoint, photo_data):
    write_jsonl(photo_data / 'data.jsonl', [qa(image='images/square.png')])
    ds = dataset(tiny_checkpoint, data_paths=str(photo_data / 'data.jsonl'))
    assert ds[0]['pixel_values'].shape[0] == 1


def test_tiling_defaults_come_from_the_checkpoint_and_can_be_overridden(tiny_checkpoint, photo_data):
    write_jsonl(photo_data / 'a.jsonl', [qa(image='wide.png')])
    common = dict(data_paths=[str(photo_data / 'a.jsonl')], image_folders=[str(photo_data / 'images')])
    default = dataset(tiny_checkpoint, **common)
    assert default.image.max_dynamic_patch == 12 and default.image.use_thumbnail
    assert default[0]['pixel_values'].shape[0] == 2 * 1 + 1
    no_thumb = dataset(tiny_checkpoint, use_thumbnail=False, max_dynamic_patch=1, **common)
    assert no_thumb[0]['pixel_values'].shape[0] == 1
    fixed = dataset(tiny_checkpoint, dynamic_image_size=False, **common)
    assert fixed[0]['pixel_values'].shape[0] == 1


# ---- sample kinds -------------------------------------------------------------------------------------------------

def test_text_only_sample_has_no_tiles(tiny_checkpoint, tmp_path):
    ds = dataset(tiny_checkpoint, data_paths=write_jsonl(tmp_path / 't.jsonl', [qa('Hello', 'Hi')]))
    item = ds[0]
    assert item['pixel_values'].shape == (0, 3, 448, 448) and n_context(ds, item) == 0
    assert ds.tokenizer.decode([t for t in item['labels'].tolist() if t != -100]) == 'Hi<|im_end|>'


def test_missing_image_placeholder_is_added_before_the_first_question(tiny_checkpoint, photo_data):
    data = write_jsonl(photo_data / 'a.jsonl', [qa('What is it?', image='square.png')])
    ds = dataset(tiny_checkpoint, data_paths=[data], image_folders=[str(photo_data / 'images')])
    text = ds.tokenizer.decode([t for t in ds[0]['input_ids'].tolist() if t != ds.encoder.img_context_id])
    assert '<|im_start|>user\n<img></img>\nWhat is it?<|im_end|>' in text


def test_multi_image_sample_splits_the_tile_budget(tiny_checkpoint, photo_data):
    record = qa('Image-1: <image>\nImage-2: <image>\nSame?', 'No', image=['wide.png', 'square.png'])
    ds = dataset(tiny_checkpoint, data_paths=[write_jsonl(photo_data / 'a.jsonl', [record])],
                 image_folders=[str(photo_data / 'images')], max_dynamic_patch=4)
    item = ds[0]
    # budget 4 // 2 images = 2 each: the wide image is 2x1 + thumbnail, the square one a single tile.
    assert item['pixel_values'].shape[0] == 4 and n_context(ds, item) == 4 * 256
    assert int((item['input_ids'] == ds.encoder.img_end_id).sum()) == 2


def _write_video(path, frames=24, fps=8):
    import cv2
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (96, 64))
    for i in range(frames):
        writer.write(np.full((64, 96, 3), i * 200 // frames, np.uint8))
    writer.release()
    return str(path)


def test_video_file_gives_one_tile_per_sampled_frame_with_frame_prefixes(tiny_checkpoint, tmp_path):
    _write_video(tmp_path / 'clip.mp4')
    record = qa('What happens?', 'It gets brighter.', video='clip.mp4')
    ds = dataset(tiny_checkpoint, data_paths=[write_jsonl(tmp_path / 'v.jsonl', [record])],
                 min_num_frames=4, max_num_frames=6)
    item = ds.load(0, random.Random(0))
    frames = item['pixel_values'].shape[0]
    assert 4 <= frames <= 6 and n_context(ds, item) == frames * 256
    text = ds.tokenizer.decode([t for t in item['input_ids'].tolist() if t != ds.encoder.img_context_id])
    assert 'Frame-1: <img></img>\nFrame-2: <img></img>' in text and f'Frame-{frames}: <img></img>\nWhat' in text
    brightness = item['pixel_values'].float().mean(dim=(1, 2, 3))
    assert torch.all(brightness[1:] > brightness[:-1])   # frames come in time order, one from each segment


def test_video_as_a_folder_of_frames_and_as_a_list(tiny_checkpoint, tmp_path):
    folder = tmp_path / 'frames'
    folder.mkdir()
    for i in range(10):
        Image.new('RGB', (80, 60), (i * 20, 0, 0)).save(folder / f'{i:03d}.jpg')
    records = [qa('<video>\nColour?', 'red', video='frames'),
               qa('Colour?', 'red', video=['frames/000.jpg', 'frames/005.jpg'])]
    ds = dataset(tiny_checkpoint, data_paths=[write_jsonl(tmp_path / 'v.jsonl', records)],
                 min_num_frames=8, max_num_frames=8)
    assert ds.load(0, random.Random(0))['pixel_values'].shape[0] == 8
    assert ds.load(1, random.Random(0))['pixel_values'].shape[0] == 2


def test_data_augment_recompresses_tiles(tiny_checkpoint, photo_data):
    data = write_jsonl(photo_data / 'a.jsonl', [qa(image='square.png')])
    common = dict(data_paths=[data], image_folders=[str(photo_data / 'images')])
    plain = dataset(tiny_checkpoint, **common).load(0, random.Random(0))['pixel_values']
    augmented = dataset(tiny_checkpoint, data_augment=True, **common).load(0, random.Random(0))['pixel_values']
    assert plain.shape == augmented.shape and not torch.equal(plain, augmented)


def test_exact_pixels_gives_the_official_pil_tiles_and_the_default_the_fast_ones(tiny_checkpoint, tmp_path):
    from internvl_plugin.dataset.image import dynamic_tiles
    from internvl_plugin.tiny import photo_paths, write_photos
    name = write_photos(str(tmp_path), sizes=[(1920, 1080)], photos=[photo_paths()[0]])[0]
    common = dict(data_paths=[write_jsonl(tmp_path / 'a.jsonl', [qa(image=name)])], max_dynamic_patch=6)
    exact = dataset(tiny_checkpoint, exact_pixels=True, **common)[0]['pixel_values']
    fast = dataset(tiny_checkpoint, **common)[0]['pixel_values']
    assert torch.equal(exact, dynamic_tiles(Image.open(tmp_path / name), 1, 6, 448, True, exact=True))
    assert torch.equal(fast, dynamic_tiles(Image.open(tmp_path / name), 1, 6, 448, True))
    assert fast.shape == exact.shape and not torch.equal(fast, exact)


# ---- lengths --------------------------------------------------------------------------------------------------

def test_lengths_come_from_sizes_without_opening_images(tiny_checkpoint, photo_data, monkeypatch):
    records = [qa(image='wide.png', width=900, height=450), qa('Hello', 'Hi'),
               qa(image='square.png', length=1234), qa(image='square.png')]
    ds = dataset(tiny_checkpoint, data_paths=[write_jsonl(photo_data / 'a.jsonl', records)],
                 image_folders=[str(photo_data / 'images')], max_dynamic_patch=6)
    monkeypatch.setattr(Image, 'open', lambda *a, **k: pytest.fail('an image was opened for lengths'))
    lengths = ds.modality_length
    assert lengths[1] < 0 and lengths[0] > 0 and lengths[2] == 1234
    exact = len(ds.encoder.encode(None, ds_turns(ds, 0), [3 * 256]).input_ids)
    assert abs(lengths[0] - exact) <= 8                         # 2x1 + thumbnail, from width/height
    assert lengths[3] >= (6 + 1) * 256                          # no size: the whole budget is assumed
    assert ds.length == [abs(v) for v in lengths]


def ds_turns(ds, index):
    from internvl_plugin.dataset.samples import parse_sample
    line = ds._index[index]
    return parse_sample(ds._store[line], ds.sources[ds._source_ids[line]].root).turns


# ---- the length policy ----------------------------------------------------------------------------------------

def test_text_after_the_last_image_is_cut_to_max_length(tiny_checkpoint, photo_data):
    long_answer = ' '.join(['red circle'] * 200)
    data = write_jsonl(photo_data / 'a.jsonl', [qa(image='square.png', answer=long_answer)])
    ds = dataset(tiny_checkpoint, data_paths=[data], image_folders=[str(photo_data / 'images')], max_length=400)
    item = ds[0]
    assert len(item['input_ids']) == 400 and n_context(ds, item) == 256
    assert (item['labels'] != -100).sum() > 10


def test_a_sample_whose_image_would_be_cut_is_dropped_with_a_warning(tiny_checkpoint, photo_data, caplog):
    records = [qa(image='wide.png', width=900, height=450), qa('Hello', 'Hi')]
    ds = dataset(tiny_checkpoint, data_paths=[write_jsonl(photo_data / 'a.jsonl', records)],
                 image_folders=[str(photo_data / 'images')], max_length=300)
    with caplog.at_level(logging.WARNING, logger='internvl_plugin'):
        item = ds[0]
    assert item['pixel_values'].shape[0] == 0        # the next sample (text) took its place
    assert 'a.jsonl:1' in caplog.text and 'past max_length 300; dropped' in caplog.text


def test_a_sample_with_no_answer_left_within_max_length_is_dropped(tiny_checkpoint, tmp_path, caplog):
    records = [qa(' '.join(['question'] * 300), 'yes'), qa('Hello', 'Hi')]
    ds = dataset(tiny_checkpoint, data_paths=[write_jsonl(tmp_path / 't.jsonl', records)], max_length=120)
    with caplog.at_level(logging.WARNING, logger='internvl_plugin'):
        item = ds[0]
    assert ds.tokenizer.decode([t for t in item['labels'].tolist() if t != -100]) == 'Hi<|im_end|>'
    assert 't.jsonl:1' in caplog.text and 'no answer token' in caplog.text


def test_long_videos_sample_fewer_frames_instead_of_being_cut(tiny_checkpoint, tmp_path):
    _write_video(tmp_path / 'clip.mp4', frames=40)
    record = qa('What happens?', 'Brighter.', video='clip.mp4')
    ds = dataset(tiny_checkpoint, data_paths=[write_jsonl(tmp_path / 'v.jsonl', [record])],
                 min_num_frames=8, max_num_frames=8, max_length=4 * 258 + 120)
    item = ds.load(0, random.Random(0))
    assert len(item['input_ids']) <= ds.max_length and item['pixel_values'].shape[0] == 4


# ---- collate ----------------------------------------------------------------------------------------------------

def test_collate_pads_with_the_pad_id_and_masks_by_length(tiny_checkpoint, photo_data):
    records = [qa(image='square.png'), qa('Hello there, how are you today?', 'Fine')]
    ds = dataset(tiny_checkpoint, family='internlm2', data_paths=[write_jsonl(photo_data / 'a.jsonl', records)],
                 image_folders=[str(photo_data / 'images')])
    image_item, text_item = ds[0], ds[1]
    text_item['input_ids'][3] = ds.pad_token_id               # a real token that happens to equal the pad id
    batch = internvl_collate_fn([text_item, image_item])['data']
    n_text, n_image = len(text_item['input_ids']), len(image_item['input_ids'])
    assert ds.pad_token_id == ds.tokenizer.pad_token_id != 0
    assert batch['input_ids'].shape == (2, max(n_text, n_image))
    assert torch.all(batch['input_ids'][0, n_text:] == ds.pad_token_id)
    assert batch['attention_mask'][0].tolist() == [1] * n_text + [0] * (n_image - n_text)
    assert batch['attention_mask'][1].all() and torch.all(batch['labels'][0, n_text:] == -100)
    assert batch['pixel_values'].shape == (1, 3, 448, 448) and batch['image_flags'].tolist() == [1]


def test_collate_of_text_only_batch_adds_one_blank_flagged_tile(tiny_checkpoint, tmp_path):
    ds = dataset(tiny_checkpoint, data_paths=[write_jsonl(tmp_path / 't.jsonl', [qa('Hi', 'Hello')])])
    batch = internvl_collate_fn([ds[0], ds[0]])['data']
    assert batch['pixel_values'].shape == (1, 3, 448, 448) and batch['image_flags'].tolist() == [0]


@pytest.mark.parametrize('family', ['qwen2', 'internlm2', 'phi3', 'llama'])
def test_a_collated_mixed_batch_trains_the_model(tiny_checkpoint, photo_data, family):
    records = [qa(image='wide.png'), qa('Hello', 'Hi'),
               qa('<image>\nCompare <image>', 'Same', image=['square.png'] * 2)]
    ds = dataset(tiny_checkpoint, family=family, data_paths=[write_jsonl(photo_data / 'a.jsonl', records)],
                 image_folders=[str(photo_data / 'images')], max_dynamic_patch=4)
    batch = internvl_collate_fn([ds[i] for i in range(3)])
    model = InternVL_V1_5(tiny_checkpoint(family), torch_dtype='float32', use_activation_checkpointing=False)
    loss = model(**batch, mode='loss')['loss']
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.model.mlp1[1].weight.grad.abs().sum() > 0


def test_dataset_and_collate_are_importable_from_the_package_root():
    import internvl_plugin
    assert {'InternVL_V1_5_Dataset', 'internvl_collate_fn'} <= set(internvl_plugin.__all__)
    assert os.path.basename(internvl_plugin.dataset.__file__) == '__init__.py'


def test_xtuners_length_grouped_sampler_keeps_modalities_apart(tiny_checkpoint, photo_data):
    from xtuner.dataset.samplers import LengthGroupedSampler
    records = [qa(image='square.png', width=448, height=448)] * 8 + [qa('hi ' * n, 'yo') for n in range(1, 9)]
    ds = dataset(tiny_checkpoint, data_paths=[write_jsonl(photo_data / 'a.jsonl', records)],
                 image_folders=[str(photo_data / 'images')])
    order = list(LengthGroupedSampler(ds, per_device_batch_size=4, length_property='modality_length', seed=0))
    assert sorted(order) == list(range(16))
    for start in range(0, 16, 4):
        kinds = {ds.modality_length[i] > 0 for i in order[start:start + 4]}
        assert len(kinds) == 1, order


def test_lengths_counted_in_several_processes_equal_those_counted_in_one(tiny_checkpoint, tmp_path, capfd, caplog):
    """Over two tasks of lines (LINES_PER_TASK each) with images, text, sizes and lengths, the forked workers
    give the same estimates, the tokenizer warns of no fork, and the pass says how far it has come."""
    save_image(tmp_path / 'wide.png', 1800, 450)
    records = [qa(image='wide.png', width=1800, height=450) if i % 3 == 0 else
               qa('Hello ' * (1 + i % 50), 'Hi', length=40 + i) if i % 3 == 1 else qa(f'Question {i}?', 'An answer.')
               for i in range(LINES_PER_TASK + 500)]
    kwargs = dict(model_path=tiny_checkpoint(), data_paths=[write_jsonl(tmp_path / 'a.jsonl', records)])
    one = InternVL_V1_5_Dataset(**kwargs, length_workers=1)
    several = InternVL_V1_5_Dataset(**kwargs, length_workers=3)
    with caplog.at_level(logging.INFO, logger='internvl_plugin'):
        assert several.modality_length == one.modality_length and several.tile_counts == one.tile_counts
    passes = [[f'counting the token lengths of {LINES_PER_TASK + 500} lines in {workers} process(es) (for '
               'length-grouped batches and packing; tools/check_data.py --write-length stores them for the next run)',
               'token lengths: 1 of 2 parts counted', 'token lengths: 2 of 2 parts counted'] for workers in (2, 1)]
    assert [record.getMessage() for record in caplog.records if record.name == 'internvl_plugin'] == sum(passes, [])
    assert one.modality_length[:3] == [one.modality_length[0], -41, one.modality_length[2]]
    assert one.modality_length[0] > 0 and one.tile_counts[:3] == [5, 0, 0]
    assert 'fork' not in capfd.readouterr().err


def test_a_dataset_whose_every_sample_is_too_long_fails_after_loading_each_once(tiny_checkpoint, tmp_path,
                                                                                 monkeypatch):
    save_image(tmp_path / 'square.png', 448, 448)
    path = write_jsonl(tmp_path / 'a.jsonl', [qa(image='square.png', id=i) for i in range(30)])
    dataset = InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), data_paths=[path], max_length=260)
    loads = []
    original = dataset.load
    monkeypatch.setattr(dataset, 'load', lambda index, rng=None: loads.append(index) or original(index, rng))
    for index in range(len(dataset)):
        with pytest.raises(DataError, match=rf'^none of the 30 samples can be loaded: each is bad or cannot fit '
                                            rf'max_length 260; the first: {path}:1: 2\d\d tokens with an image'):
            dataset[index]
    assert sorted(loads) == list(range(30))


def test_warnings_stop_after_twenty_lines_with_one_that_says_so(tiny_checkpoint, tmp_path, caplog):
    save_image(tmp_path / 'square.png', 448, 448)
    path = write_jsonl(tmp_path / 'a.jsonl', [qa(image='square.png', id=i) for i in range(30)] + [qa('Hi', 'Hello')])
    dataset = InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), data_paths=[path], max_length=100)
    with caplog.at_level(logging.WARNING, logger='internvl_plugin'):
        items = [dataset[index] for index in range(len(dataset))]
    assert all(len(item['pixel_values']) == 0 for item in items)   # the text sample stands in for each
    messages = [record.getMessage() for record in caplog.records if record.name == 'internvl_plugin']
    assert len(messages) == 21 and messages[0].startswith(f'{path}:1: ') and messages[19].startswith(f'{path}:20: ')
    assert messages[20] == ('more than 20 samples of this dataset had warnings; the rest are left out '
                            '(tools/check_data.py lists every problem)')


def test_a_dataset_whose_images_alone_exceed_max_length_fails_at_build(tiny_checkpoint, tmp_path):
    save_image(tmp_path / 'square.png', 448, 448)
    path = write_jsonl(tmp_path / 'a.jsonl', [qa('<image>\n<image>\nSame?', 'Yes.', image=['square.png'] * 2)] +
                       [qa(image='square.png', id=i) for i in range(5)])
    with pytest.raises(DataError, match=rf'^no sample fits max_length 200: the images of each take more tokens \(at '
                                        rf'least one tile of 256 tokens each\); the least, {path}:2, needs 258. '
                                        'Raise max_length$'):
        InternVL_V1_5_Dataset(model_path=tiny_checkpoint(), data_paths=[path], max_length=200)
