"""Running a training step without its memory: fake floating-point tensors, and a count of every live storage.

`FakeFloatMode` makes every floating-point tensor a PyTorch fake tensor (shape, dtype and storage size, no data),
while integer and boolean tensors (token ids, labels, masks, positions) stay real: the model reads their values
(how many image tokens, where samples start, which tokens are supervised), which a fake tensor cannot give. Indexing
a fake tensor with a real boolean mask becomes indexing with the mask's positions, whose output shape is known.

`StorageTracker` sees every tensor an operation returns, fake or real, and counts each storage once while it lives,
under the category that was current when it appeared; its peak is the peak of the step.
"""
import weakref
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, Optional

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensor
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._mode_utils import no_dispatch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only

from .fake_outputs import OutputMemo, new_fake, tensor_arguments

aten = torch.ops.aten
CATEGORIES = ('parameters', 'gradients', 'optimizer states', 'activations', 'logits / loss')
TRANSIENT = ('activations', 'logits / loss')
REAL_NUMEL_LIMIT = 2 ** 24   # larger integer / boolean results stay fake too (4-bit weights, attention masks)
_DEVICE = torch.ops.prim.device.default   # asked for every fake tensor of every op
_INDEX_OPS = (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default)


def _real_bool(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor) and value.dtype == torch.bool


def _positions(indices: Iterable[Optional[torch.Tensor]]) -> list:
    """Index lists with real boolean masks replaced by the masks' positions (one long tensor per masked dim)."""
    positions = []
    for index in indices:
        if _real_bool(index):
            with no_dispatch():
                positions.extend(index.nonzero().unbind(1))
        else:
            positions.append(index)
    return positions


class FakeFloatMode(TorchDispatchMode):
    """Floating-point results are fake tensors; integer and boolean results of real inputs are computed, unless
    they are larger than REAL_NUMEL_LIMIT elements (whose values no step reads; reading one fails loudly).

    Entering it enters its fake mode too, beneath it: operations it passes on reach the fake mode, and those it
    computes run with no mode (`no_dispatch`). Entering the fake mode for each operation instead took a fifth of
    the step's time. Operations on fake tensors are answered from an OutputMemo (fake_outputs.py) where it can.
    Under `reporting_to` it tells a StorageTracker what each operation returns, one Python mode for each operation
    where a tracker of its own would be a second."""

    def __init__(self):
        super().__init__()
        self.fake = FakeTensorMode(allow_non_fake_inputs=True)
        self.outputs = OutputMemo(self.fake)
        self.tracker: Optional['StorageTracker'] = None

    @contextmanager
    def reporting_to(self, tracker: 'StorageTracker') -> Iterator[None]:
        """This mode, entered, with `tracker` counting every result."""
        self.tracker = tracker
        try:
            with self:
                yield
        finally:
            self.tracker = None

    def __enter__(self) -> 'FakeFloatMode':
        self.fake.__enter__()
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        super().__exit__(*exc_info)
        self.fake.__exit__(*exc_info)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _DEVICE:   # asked of fake tensors more often than all operations together: answered here
            tensor = args[0]
            if isinstance(tensor, FakeTensor) and not tensor.fake_mode.in_kernel_invocation:
                return tensor.fake_device
            return func(*args, **(kwargs or {}))
        out = self._run(func, args, kwargs or {})
        if self.tracker is not None:
            self.tracker.track_outputs(out)
        return out

    def _run(self, func, args, kwargs):
        if func in _INDEX_OPS and any(_real_bool(i) for i in args[1]):
            args = (args[0], _positions(args[1]), *args[2:])
        elif func is aten.masked_select.default and _real_bool(args[1]):
            shape = list(torch.broadcast_shapes(args[0].shape, args[1].shape))
            source, mask = (self._run(aten.expand.default, (tensor, shape), {}) for tensor in args[:2])
            return self._run(aten.index.Tensor, (source, [mask]), {})
        tensors = tensor_arguments(args, kwargs)
        if any(isinstance(t, FakeTensor) for t in tensors):
            if not all(isinstance(t, FakeTensor) for t in tensors):
                args, kwargs = tree_map_only(torch.Tensor, self._as_fake, (args, kwargs))
            return self.outputs.run(func, args, kwargs)
        if func.is_view:   # a view of real tensors: their storage, nothing new to make fake
            with no_dispatch():
                return func(*args, **kwargs)
        try:
            probe = self.outputs.run(func, *tree_map_only(torch.Tensor, self._as_fake, (args, kwargs)))
        except (DataDependentOutputException, DynamicOutputShapeException):
            probe = None   # nonzero, item, bincount: their values are needed, and they are small
        outputs = [t for t in tree_leaves(probe) if isinstance(t, torch.Tensor)]
        if any(t.is_floating_point() for t in outputs) or sum(t.numel() for t in outputs) > REAL_NUMEL_LIMIT:
            return probe
        with no_dispatch():
            return func(*args, **kwargs)

    def _as_fake(self, tensor: torch.Tensor) -> torch.Tensor:
        """A real input made fake: a fake tensor of its shape, strides and dtype. The operation reads no value of
        it (a fake tensor has none), and it is the operation's own: autograd saves the real one. The fake mode's
        converter, which describes a tensor's whole view chain, took 0.6 ms a tensor, and an MoE layer indexes by
        new real token positions in every layer."""
        if isinstance(tensor, FakeTensor):
            return tensor
        return new_fake(self.fake, tensor.shape, tensor.stride(), tensor.dtype, tensor.device)


class StorageTracker(TorchDispatchMode):
    """Live bytes per category, counted per storage (views share theirs), and the breakdown at two peaks: the
    peak of everything, and the peak of what a step creates and frees (activations and logits / loss).

    Tensors whose last dimension is the vocabulary (`logits_width`) count as 'logits / loss'; gradients are moved
    to 'gradients' when they land on their parameter (`track_gradients`)."""

    def __init__(self, logits_width: Optional[int] = None):
        super().__init__()
        self.logits_width = logits_width
        self.category = 'activations'
        self.live: Dict[int, list] = {}
        self.totals = dict.fromkeys(CATEGORIES, 0)
        self.peak = dict(self.totals)
        self.transient_peak = dict(self.totals)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is not _DEVICE:
            self.track_outputs(out)
        return out

    def track_outputs(self, out: Any) -> None:
        """Tracks every tensor an operation returned (an aten operation returns a tensor or a list or tuple of
        them, if any)."""
        if isinstance(out, torch.Tensor):
            self.track(out)
        elif isinstance(out, (list, tuple)):
            for tensor in out:
                if isinstance(tensor, torch.Tensor):
                    self.track(tensor)

    def track(self, tensor: torch.Tensor, category: Optional[str] = None) -> None:
        """Counts the tensor's storage from now until it is freed (once, however many tensors view it)."""
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        if category is None:
            category = self.category
            if self.logits_width and tensor.dim() and tensor.shape[-1] == self.logits_width:
                category = 'logits / loss'
        entry = [storage.nbytes(), category]
        self.live[key] = entry
        self.totals[category] += entry[0]
        weakref.finalize(storage, self._free, key)
        self._update_peaks()

    def _free(self, key: int) -> None:
        nbytes, category = self.live.pop(key)
        self.totals[category] -= nbytes

    def recategorize(self, tensor: torch.Tensor, category: str) -> None:
        entry = self.live.get(tensor.untyped_storage()._cdata)
        if entry is None:
            self.track(tensor, category)
            return
        self.totals[entry[1]] -= entry[0]
        self.totals[category] += entry[0]
        entry[1] = category

    def _update_peaks(self) -> None:
        if sum(self.totals.values()) > sum(self.peak.values()):
            self.peak = dict(self.totals)
        if sum(self.totals[c] for c in TRANSIENT) > sum(self.transient_peak[c] for c in TRANSIENT):
            self.transient_peak = dict(self.totals)

    def reset_peaks(self) -> None:
        self.peak = dict(self.totals)
        self.transient_peak = dict(self.totals)

    @contextmanager
    def counting_as(self, category: str) -> Iterator[None]:
        previous, self.category = self.category, category
        try:
            yield
        finally:
            self.category = previous

    def track_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> list:
        """Each gradient counts as 'gradients' once it is accumulated into its parameter; returns the hooks."""
        return [param.register_post_accumulate_grad_hook(lambda p: self.recategorize(p.grad, 'gradients'))
                for param in parameters if param.requires_grad]
