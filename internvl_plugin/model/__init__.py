from .internvl import InternVL_V1_5
from .optim import InternVLAdamW

__all__ = ['InternVL_V1_5', 'InternVLAdamW']
