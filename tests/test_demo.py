import json

import pytest
from PIL import Image
from xtuner_cli import REPO

from internvl_plugin.curves import read_training_curves
from internvl_plugin.demo import run_demo, run_preference_demo

# The README's demo command runs in the newest world (scripts/demo.sh); xtuner train itself runs in every world
# (test_xtuner_train).
pytestmark = pytest.mark.newest_only


def test_demo_learns_from_pixels_through_xtuner_train_and_conversion(tmp_path):
    result = run_demo(str(tmp_path / 'demo'), repo=REPO)
    assert result['before'] <= 0.25  # untrained: no better than chance (4 colours)
    assert result['after'] >= 0.9    # the converted model answers from the image
    train = tmp_path / 'demo' / 'train'
    assert (train / 'iter_256.pth').exists()  # 512 images x 4 repeats / batch 8, through xtuner train
    assert (tmp_path / 'demo' / 'converted' / 'config.json').exists()
    log = (tmp_path / 'demo' / 'xtuner_train.log').read_text()
    assert 'Saving checkpoint at 256 iterations' in log
    # The settings given with --cfg-options (path, meta_path, batch_size, ...) reached the model and the dataset.
    assert f"model.model_path='{tmp_path / 'demo' / 'tiny-internvl-qwen2'}'" in log
    curves = read_training_curves(str(train))
    assert [step for step, _ in curves['loss']] == list(range(10, 257, 10))  # logged every 10 of 256 iterations
    assert curves['loss'][-1][1] < curves['loss'][0][1] / 2
    with Image.open(tmp_path / 'demo' / 'training_curves.png') as png:
        assert png.format == 'PNG' and png.size == (700, 660)  # loss, lr, grad_norm panels


def test_preference_demo_learns_to_prefer_and_answer_the_right_colour(tmp_path):
    result = run_preference_demo(str(tmp_path / 'demo'), repo=REPO)
    assert result['before']['preference'] <= 0.7 and result['before']['greedy'] <= 0.25   # untrained: near chance
    assert result['after']['preference'] >= 0.9   # the chosen answer is the likelier one on held-out pairs
    assert result['after']['greedy'] >= 0.9       # and the greedy answer names the shape's colour
    train = tmp_path / 'demo' / 'train'
    assert (train / 'iter_128.pth').exists()      # 512 pairs / batch 4, through xtuner train
    records = [json.loads(line) for path in train.glob('*/vis_data/scalars.json') for line in path.open()]
    accuracy = [record['rewards_accuracy'] for record in records if 'rewards_accuracy' in record]
    margin = [record['rewards_margin'] for record in records if 'rewards_margin' in record]
    assert len(accuracy) == len(margin) == 12                   # logged every 10 of 128 iterations
    # Each logged value covers one batch of 4 pairs, so single points are noisy: compare windows.
    assert sum(accuracy[-6:]) / 6 >= 0.9                         # a measured run: 1.0 from step 60 on
    assert sum(margin[-3:]) / 3 > sum(margin[:3]) / 3 + 0.5       # measured: 0.07 -> 1.03
    assert (tmp_path / 'demo' / 'converted' / 'config.json').exists()
