"""What the plugin changes in xtuner's train tool, applied by `internvl_plugin_bridge` when the tool loads.

- `--cfg-options path=X` (any top-level setting) also sets the values the config computes from it
  (`model.model_path`, `train_dataloader.dataset.model_path`): MMEngine merges options into a config it has
  already evaluated, so before, the model and the dataset kept the hub id.
- Without `--deepspeed`, MMEngine's Runner builds the model before the data, so a wrong `meta_path` or a bad
  annotation line failed only after the model (many GB) had loaded. The training dataset is built and checked
  first (bad data is one line, `train_dataloader.dataset: file:line: ...`); the data loader then takes that
  dataset as it is.
- The plugin's own log messages (data warnings, the progress of a length pass) show in the console.
"""
import logging
from typing import Mapping

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import DATASETS
from mmengine.runner import Runner

from .config_settings import setting_overrides
from .dataset.sources import DataError


def _merge_reaching_setting_uses(merge):
    def merge_from_dict(self: Config, options: Mapping[str, object], allow_list_keys: bool = True) -> None:
        merge(self, options, allow_list_keys)
        if not self.filename or not self.filename.endswith('.py'):
            return
        try:
            extra = setting_overrides(self.filename, options, {key: self[key] for key in self.keys()})
        except ValueError as error:
            raise SystemExit(str(error)) from None
        if extra:
            settings = ', '.join(key for key in options if '.' not in key)
            reached = ', '.join(f'{key}={value!r}' for key, value in extra.items())
            print_log(f'--cfg-options {settings} also set {reached} (the config computes them from these settings)',
                      logger='current')
            merge(self, extra, allow_list_keys)
    return merge_from_dict


def _model_after_data(build_model):
    def build_model_after_data(self: Runner, model):
        loader = self._train_dataloader
        if isinstance(loader, dict) and isinstance(loader.get('dataset'), dict):
            try:
                dataset = DATASETS.build(loader['dataset'])
            except DataError as error:  # the data as written: its message says where; a traceback adds nothing
                raise SystemExit(f'train_dataloader.dataset: {error}') from None

            def built_dataset():
                return dataset
            loader['dataset'] = dict(type=built_dataset)  # a function: the loader's deepcopy keeps the dataset
        return build_model(self, model)
    return build_model_after_data


def _plugin_messages_in_the_log() -> None:
    """The plugin's own messages (the dataset's warnings, the progress of a length pass) at INFO and above, in
    the console beside MMEngine's; without a handler Python shows only warnings, and bare."""
    plugin = logging.getLogger('internvl_plugin')
    if not plugin.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter('%(asctime)s - internvl_plugin - %(levelname)s - %(message)s',
                                               '%m/%d %H:%M:%S'))
        plugin.addHandler(handler)
        plugin.setLevel(logging.INFO)


applied = False


def apply() -> None:
    """Once per process, when xtuner's train tool (or another xtuner tool) loads its helpers."""
    global applied
    if not applied:
        Config.merge_from_dict = _merge_reaching_setting_uses(Config.merge_from_dict)
        Runner.build_model = _model_after_data(Runner.build_model)
        _plugin_messages_in_the_log()
        applied = True
