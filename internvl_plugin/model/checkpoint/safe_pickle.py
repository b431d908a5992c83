"""Reading training checkpoints without running code from them.

A `.pth` file is a pickle, and a pickle can name any function to call while it loads: a crafted `iter_xxx.pth`
would run it in the converter or at model build (`pretrained_pth`). torch's `weights_only=True` refuses such
files, but it refuses mmengine's own checkpoints too: their training state (history buffers holding bound
methods, numpy values) needs `builtins.getattr`, whose allow-listing would reopen the sandbox. The converter only
needs the tensors, so this loader calls only what `weights_only` allows (tensor and storage rebuilding, plain
containers) and puts an inert `Withheld` object wherever the file asks for anything else. Nothing of the file's
choosing runs; the weights come out whole. Used as `torch.load(..., pickle_module=safe_pickle)`.
"""
import contextlib
import importlib
import pickle
from typing import Any, Callable, Dict, Iterator

import torch


class Withheld:
    """Stands for an object the file asked to build with code this loader does not run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> 'Withheld':
        return Withheld()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


# Beyond torch's list: DeepSpeed's ZeRO stage, an IntEnum its zero_to_fp32 compares (rebuilding one looks up a
# member, nothing else).
EXTRA_ALLOWED = [('deepspeed.runtime.zero.config', 'ZeroStageEnum')]
_allowed: Dict[str, Any] = {}


def allowed_globals() -> Dict[str, Any]:
    """torch's own weights_only allow-list ('module.name' -> object) and EXTRA_ALLOWED, read once."""
    if not _allowed:
        from torch._weights_only_unpickler import _get_allowed_globals
        _allowed.update(_get_allowed_globals())
        for module, name in EXTRA_ALLOWED:
            try:
                _allowed[f'{module}.{name}'] = getattr(importlib.import_module(module), name)
            except ImportError:  # no deepspeed installed: no DeepSpeed checkpoint to read either
                pass
    return _allowed


class Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = allowed_globals().get(f'{module}.{name}')
        if found is not None:
            return found
        return type(name, (Withheld,), {'__module__': f'withheld.{module}'})


def load(file: Any, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()


@contextlib.contextmanager
def torch_load_arguments(adjust: Callable[[Any, Dict[str, Any]], None]) -> Iterator[None]:
    """Within the block, every torch.load call gets its keyword arguments through `adjust(file, kwargs)` first:
    how code that calls torch.load itself (DeepSpeed, mmengine) is made to load the way a caller needs."""
    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        adjust(f, kwargs)
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def torch_load(path: str) -> Any:
    """torch.load of `path` on the CPU through this module."""
    import sys
    return torch.load(path, map_location='cpu', weights_only=False, pickle_module=sys.modules[__name__])
