"""A top-level setting given with --cfg-options reaches every value the config computes from it
(internvl_plugin.config_settings; the train tool applies it through the bridge)."""
import os

import pytest
from mmengine.config import Config

from internvl_plugin.config_settings import setting_overrides
from internvl_plugin.train_tool import _merge_reaching_setting_uses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = os.path.join(REPO, 'configs', 'v2_5', 'internvl_v2_5_qwen2_5_0_5b_finetune.py')


def test_settings_reach_the_model_the_dataset_and_the_base_schedule():
    cfg = Config.fromfile(FULL)
    options = {'path': '/data/InternVL2_5-1B', 'meta_path': 'mine.json', 'batch_size': 2, 'save_steps': 100,
               'train_dataloader.batch_size': 1}
    cfg.merge_from_dict(options)   # MMEngine's own (the train tool's once xtuner's tools have loaded in this process)
    extra = setting_overrides(cfg.filename, options, {key: cfg[key] for key in cfg.keys()})
    assert extra == {'default_hooks.checkpoint.interval': 100, 'model.model_path': '/data/InternVL2_5-1B',
                     'train_dataloader.dataset.model_path': '/data/InternVL2_5-1B',
                     'train_dataloader.dataset.meta_path': 'mine.json',
                     'train_dataloader.sampler.per_device_batch_size': 8}  # 2 x accumulative_counts 4
    # train_dataloader.batch_size was given itself and keeps its value.
    trained = Config.fromfile(FULL)
    _merge_reaching_setting_uses(Config.merge_from_dict)(trained, options)   # the train tool's
    assert (trained.model.model_path, trained.train_dataloader.dataset.meta_path) == ('/data/InternVL2_5-1B', 'mine.json')
    assert (trained.train_dataloader.batch_size, trained.default_hooks.checkpoint.interval) == (1, 100)


def test_a_derived_setting_carries_the_change_on(tmp_path):
    config = tmp_path / 'derived.py'
    config.write_text('steps = 10\ntotal = steps * 2\n'
                      'train_cfg = dict(max_iters=total, hooks=[dict(interval=steps)])\n')
    extra = setting_overrides(str(config), {'steps': 3}, {'steps': 3, 'total': 20})
    assert extra == {'total': 6, 'train_cfg.max_iters': 6, 'train_cfg.hooks.0.interval': 3}


def test_a_value_that_needs_more_than_settings_names_the_key_to_set(tmp_path):
    config = tmp_path / 'joined.py'
    config.write_text("import os.path as osp\ndata_root = 'data'\nmeta_path = osp.join(data_root, 'meta.json')\n")
    with pytest.raises(ValueError) as error:
        setting_overrides(str(config), {'data_root': '/mine'}, {'data_root': '/mine', 'meta_path': 'data/meta.json'})
    assert str(error.value) == (f"--cfg-options data_root: meta_path is `osp.join(data_root, 'meta.json')` in "
                                f"{config}, which cannot be computed again here (name 'osp' is not defined); "
                                'set meta_path as well')
    assert setting_overrides(str(config), {'data_root': '/mine', 'meta_path': 'm.json'}, {}) == {}
