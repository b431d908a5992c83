from .checkpoint import FAMILY_TEMPLATES, VIT_STYLES, build_tiny_checkpoint, build_tiny_parts
from .photos import photo_paths, write_photos
from .tokenizer import build_tiny_tokenizer
from .workload import write_mixed_workload

__all__ = ['FAMILY_TEMPLATES', 'VIT_STYLES', 'build_tiny_checkpoint', 'build_tiny_parts', 'build_tiny_tokenizer',
           'photo_paths', 'write_mixed_workload', 'write_photos']
