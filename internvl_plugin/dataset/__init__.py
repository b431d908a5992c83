from .collate import internvl_collate_fn
from .internvl_dataset import InternVL_V1_5_Dataset
from .packing import PackedDataset
from .sources import DataError
from .templates import TEMPLATES, get_template

__all__ = ['InternVL_V1_5_Dataset', 'PackedDataset', 'internvl_collate_fn', 'DataError', 'TEMPLATES', 'get_template']
