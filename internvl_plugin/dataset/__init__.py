from .collate import internvl_collate_fn, preference_collate_fn
from .internvl_dataset import InternVL_V1_5_Dataset
from .packing import PackedDataset
from .preference_dataset import PreferenceDataset
from .sources import DataError
from .templates import TEMPLATES, get_template

__all__ = ['InternVL_V1_5_Dataset', 'PackedDataset', 'PreferenceDataset', 'internvl_collate_fn',
           'preference_collate_fn', 'DataError', 'TEMPLATES', 'get_template']
