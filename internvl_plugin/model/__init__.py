from .internvl import InternVL_V1_5

__all__ = ['InternVL_V1_5']
