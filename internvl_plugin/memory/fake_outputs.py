"""The outputs of operations on fake tensors, remembered by what decides them.

An operation on fake tensors gives outputs whose shapes, strides and dtypes follow from its inputs' shapes, strides
and dtypes and its other arguments alone, and each output is either one of its inputs (in-place operations), a view
of an input's storage, or a new storage. `OutputMemo` remembers that answer per operation and inputs, and gives it
again as new fake tensors without asking the fake mode. PyTorch's FakeTensorMode caches its answers too, but its
cache key is made for symbolic shapes and tensor subclasses and costs about 90 us an operation here, where the
step of InternVL3.5-241B-A28B QLoRA runs 140,000 operations; this key costs a few.

What cannot be remembered so is asked of the fake mode every time: outputs that are not all fake tensors (item(),
sizes), fresh outputs sharing one storage, operations that change an input's shape or strides, arguments of other
types than tensors, numbers, strings, dtypes and devices.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, in_kernel_invocation_manager

_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)
_INPUT, _VIEW, _NEW, _NONE = range(4)
Plan = Tuple[Any, ...]


class _NotRemembered(Exception):
    """An argument or output outside what OutputMemo can describe."""


def _tensor_signature(tensor: FakeTensor) -> tuple:
    if tensor.constant is not None or tensor.layout is not torch.strided or tensor.is_conj() or tensor.is_neg():
        raise _NotRemembered
    return (tensor.shape, tensor.stride(), tensor.storage_offset(), tensor.dtype, tensor.requires_grad,
            tensor.fake_device)


def tensor_arguments(args: tuple, kwargs: Dict[str, Any]) -> List[torch.Tensor]:
    """An operation's tensor arguments: an aten operation takes tensors, optional tensors and lists of them (what
    pytree would find, without its generality, which cost more than the fake mode's answer)."""
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(item for item in value if isinstance(item, torch.Tensor))
    return found


def _signature(value: Any) -> Any:
    """A hashable description of an argument: a fake tensor's metadata, a number with its type (1, 1.0 and True
    hash alike), lists and tuples item by item."""
    if isinstance(value, FakeTensor):
        return _tensor_signature(value)
    if isinstance(value, (list, tuple)):
        return type(value), tuple(_signature(item) for item in value)
    if isinstance(value, _PLAIN):
        return type(value), value
    raise _NotRemembered


class OutputMemo:
    """Remembered answers of `fake`, the fake mode every operation passed to `run` goes to."""

    def __init__(self, fake: FakeTensorMode):
        self.fake = fake
        self.plans: Dict[tuple, Optional[Tuple[Optional[type], List[Plan]]]] = {}

    def run(self, func: torch._ops.OpOverload, args: tuple, kwargs: Dict[str, Any]) -> Any:
        """func(*args, **kwargs) as the fake mode answers it; `args` and `kwargs` hold no real tensors."""
        try:
            key = (func, _signature(args), tuple((name, _signature(value)) for name, value in kwargs.items()),
                   torch.is_grad_enabled(), torch.get_default_dtype())
        except _NotRemembered:
            return func(*args, **kwargs)
        inputs = tensor_arguments(args, kwargs)
        if key in self.plans:
            remembered = self.plans[key]
            if remembered is None:
                return func(*args, **kwargs)
            sequence, plans = remembered
            if sequence is None:
                return self._output(plans[0], inputs)
            return sequence(self._output(plan, inputs) for plan in plans)
        signatures = [_tensor_signature(tensor) for tensor in inputs]
        out = func(*args, **kwargs)
        try:
            if [_tensor_signature(tensor) for tensor in inputs] != signatures:
                raise _NotRemembered   # resize_, transpose_ and the like change an input's metadata
            sequence = type(out) if type(out) in (tuple, list) else None
            self.plans[key] = sequence, self._plans(out if sequence else [out], inputs)
        except _NotRemembered:
            self.plans[key] = None
        return out

    def _plans(self, outputs: Sequence[Any], inputs: Sequence[FakeTensor]) -> List[Plan]:
        storages = [tensor.untyped_storage()._cdata for tensor in inputs]
        plans, new = [], set()
        for output in outputs:
            if output is None:
                plans.append((_NONE,))
                continue
            if not isinstance(output, FakeTensor):
                raise _NotRemembered
            shape, stride, offset, dtype, requires_grad, device = _tensor_signature(output)
            same = [i for i, tensor in enumerate(inputs) if tensor is output]
            storage = output.untyped_storage()
            if same:
                plans.append((_INPUT, same[0]))
            elif storage._cdata in storages:
                plans.append((_VIEW, storages.index(storage._cdata), shape, stride, offset, dtype, requires_grad,
                              device))
            else:
                plan = (_NEW, shape, stride, offset, dtype, requires_grad, device)
                if storage._cdata in new or offset or \
                        self._output(plan, inputs).untyped_storage().nbytes() != storage.nbytes():
                    raise _NotRemembered
                new.add(storage._cdata)
                plans.append(plan)
        return plans

    def _output(self, plan: Plan, inputs: Sequence[FakeTensor]) -> Optional[FakeTensor]:
        """The output `plan` describes: an input, None, or a new fake tensor (on an input's storage for a view)."""
        kind = plan[0]
        if kind == _INPUT:
            return inputs[plan[1]]
        if kind == _NONE:
            return None
        if kind == _VIEW:
            _, source, shape, stride, offset, dtype, requires_grad, device = plan
            with in_kernel_invocation_manager(self.fake):
                meta = torch.empty((0,), dtype=dtype, device='meta')
                meta.set_(inputs[source].untyped_storage(), offset, shape, stride)
            meta.requires_grad_(requires_grad)
            return FakeTensor(self.fake, meta, device)
        _, shape, stride, _, dtype, requires_grad, device = plan
        return new_fake(self.fake, shape, stride, dtype, device, requires_grad)


def new_fake(fake: FakeTensorMode, shape: Sequence[int], stride: Sequence[int], dtype: torch.dtype,
             device: torch.device, requires_grad: bool = False) -> FakeTensor:
    """A fake tensor of its own storage, as the fake mode's cache makes one: a meta tensor made under the fake
    mode's kernel invocation, wrapped."""
    with in_kernel_invocation_manager(fake):
        meta = torch.empty_strided(shape, stride, dtype=dtype, device='meta')
    meta.requires_grad_(requires_grad)
    return FakeTensor(fake, meta, device)
