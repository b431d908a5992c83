from .checkpoint import FAMILY_TEMPLATES, VIT_STYLES, build_tiny_checkpoint, build_tiny_parts
from .photos import photo_paths, write_photos
from .shapes import RELEASED_SHAPES, released_config, shape_config, write_config_checkpoint, write_shape_checkpoint
from .tokenizer import build_tiny_tokenizer
from .workload import write_mixed_workload

__all__ = ['FAMILY_TEMPLATES', 'RELEASED_SHAPES', 'VIT_STYLES', 'build_tiny_checkpoint', 'build_tiny_parts',
           'build_tiny_tokenizer', 'photo_paths', 'released_config', 'shape_config', 'write_config_checkpoint',
           'write_mixed_workload', 'write_photos', 'write_shape_checkpoint']
