from .run import run_demo

__all__ = ['run_demo']
