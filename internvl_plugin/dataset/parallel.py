"""Work on the annotation lines spread over forked processes: a child inherits the dataset (tokenizer, line
store) from the fork, so only the arguments and the results cross between processes."""
import multiprocessing
import os
from typing import Callable, List, Optional, Sequence, TypeVar

Argument = TypeVar('Argument')
Result = TypeVar('Result')
_FORKED_FUNCTION: Optional[Callable] = None


def default_workers() -> int:
    """What `None` workers means: the CPUs this process may run on, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1))


def _call_inherited(argument):
    return _FORKED_FUNCTION(argument)


def _no_progress(done: int, total: int) -> None:
    """The default `on_done` of map_in_processes: says nothing."""


def map_in_processes(function: Callable[[Argument], Result], arguments: Sequence[Argument], workers: int,
                     on_done: Callable[[int, int], None] = _no_progress) -> List[Result]:
    """`[function(a) for a in arguments]`, in `workers` forked processes; in this one where the platform cannot
    fork, for one worker, or for a single argument. `on_done(done, total)` hears each finished argument."""
    global _FORKED_FUNCTION
    workers = min(workers, len(arguments))
    if workers <= 1 or 'fork' not in multiprocessing.get_all_start_methods():
        results = []
        for argument in arguments:
            results.append(function(argument))
            on_done(len(results), len(arguments))
        return results
    _FORKED_FUNCTION = function
    saved = os.environ.get('TOKENIZERS_PARALLELISM')
    os.environ['TOKENIZERS_PARALLELISM'] = 'false'   # a forked child must not use the parent's thread pool
    try:
        with multiprocessing.get_context('fork').Pool(workers) as pool:
            results = []
            for result in pool.imap(_call_inherited, arguments, chunksize=1):
                results.append(result)
                on_done(len(results), len(arguments))
            return results
    finally:
        _FORKED_FUNCTION = None
        if saved is None:
            os.environ.pop('TOKENIZERS_PARALLELISM', None)
        else:
            os.environ['TOKENIZERS_PARALLELISM'] = saved
