from .internvl import InternVL_V1_5
from .optim import InternVLAdamW
from .preference_model import InternVLPreference

__all__ = ['InternVL_V1_5', 'InternVLAdamW', 'InternVLPreference']
