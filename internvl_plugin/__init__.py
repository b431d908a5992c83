"""internvl_plugin: fine-tune InternVL with XTuner / MMEngine configs."""
from .model import InternVL_V1_5

__version__ = '0.1.0'
__all__ = ['InternVL_V1_5']
