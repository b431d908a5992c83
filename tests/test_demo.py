from xtuner_cli import REPO

from internvl_plugin.demo import run_demo


def test_demo_learns_from_pixels_through_xtuner_train_and_conversion(tmp_path):
    result = run_demo(str(tmp_path / 'demo'), repo=REPO)
    assert result['before'] <= 0.25  # untrained: no better than chance (4 colours)
    assert result['after'] >= 0.9    # the converted model answers from the image
    train = tmp_path / 'demo' / 'train'
    assert (train / 'iter_256.pth').exists()  # 512 images x 4 repeats / batch 8, through xtuner train
    assert (tmp_path / 'demo' / 'converted' / 'config.json').exists()
    assert 'Saving checkpoint at 256 iterations' in (tmp_path / 'demo' / 'xtuner_train.log').read_text()
