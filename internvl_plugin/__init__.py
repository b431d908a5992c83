"""internvl_plugin: fine-tune InternVL with XTuner / MMEngine configs."""
from .dataset import (InternVL_V1_5_Dataset, PackedDataset, PreferenceDataset, internvl_collate_fn,
                      preference_collate_fn)
from .model import InternVL_V1_5, InternVLAdamW, InternVLPreference
from .progress import ProgressLoggerHook
from .schedule import CosineLR, WarmupLR

__version__ = '0.1.0'
__all__ = ['InternVL_V1_5', 'InternVLAdamW', 'InternVLPreference', 'InternVL_V1_5_Dataset', 'PackedDataset',
           'PreferenceDataset', 'internvl_collate_fn', 'preference_collate_fn', 'WarmupLR', 'CosineLR',
           'ProgressLoggerHook']
