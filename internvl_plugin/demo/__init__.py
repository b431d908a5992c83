from .preference import run_preference_demo
from .run import run_demo

__all__ = ['run_demo', 'run_preference_demo']
