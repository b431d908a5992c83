from .checkpoint import FAMILY_TEMPLATES, VIT_STYLES, build_tiny_checkpoint, build_tiny_parts
from .tokenizer import build_tiny_tokenizer
from .workload import write_mixed_workload

__all__ = ['FAMILY_TEMPLATES', 'VIT_STYLES', 'build_tiny_checkpoint', 'build_tiny_parts', 'build_tiny_tokenizer',
           'write_mixed_workload']
