"""A second device without a GPU: CPU memory that claims to live elsewhere, and refuses to mix with the CPU.

Torch offers no second real device on a CPU machine, and ``meta`` tensors have no data (so code
that renders, indexes by value or prints numbers cannot run on them). :class:`Remote` keeps its
data on the CPU but reports ``meta`` as its device, runs every operation on that data, and raises,
as CUDA would, when an operation mixes it with an ordinary CPU tensor of one or more dimensions
(0-dim CPU tensors mix, as they do with CUDA tensors; ``copy_`` may cross devices and advanced
indexing takes CPU index tensors, as with CUDA). ``.cpu()`` / ``.to("cpu")`` return ordinary tensors; ``.numpy()`` of a remote tensor fails,
as it does for a CUDA tensor. Under :func:`remote_device`, factories and ``.to`` asked for
``meta`` make remote tensors, so ``torch.zeros(n, device=x.device)`` follows ``x`` as on a GPU.

:func:`to_remote` moves a module's parameters and buffers there in place. Autograd is not
supported: autograd makes tensors on the reported device that hold no data, so this is for forward and
inference paths (evaluation, figures, a training loss without its backward).
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

FAKE = torch.device("meta")  # the device remote tensors report


_INDEXING = (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
             torch.ops.aten._index_put_impl_.default)  # ops that accept CPU index tensors for device tensors


class DeviceMismatch(RuntimeError):
    """An operation mixed a tensor of the second device with a CPU tensor."""


def _is_fake(device) -> bool:
    return device is not None and torch.device(device).type == FAKE.type


class Remote(torch.Tensor):
    """CPU data reported as living on :data:`FAKE`."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        data = data.detach()
        out = torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(), dtype=data.dtype,
                                                  device=FAKE, storage_offset=data.storage_offset())
        out.data_ = data
        return out

    def __repr__(self):
        return f"Remote({self.data_!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = pytree.tree_leaves((args, kwargs))
        if func in (torch.ops.aten._to_copy.default,) and not _is_fake(kwargs.get("device", FAKE)):
            return func(args[0].data_, *args[1:], **kwargs)  # leaving the device: an ordinary tensor
        if any(isinstance(t, torch.Tensor) and not isinstance(t, Remote) and t.device == FAKE for t in leaves):
            raise RuntimeError(f"{func}: a tensor without data was made on the fake device outside remote_device()")
        local = [t for t in leaves if isinstance(t, torch.Tensor) and not isinstance(t, Remote) and t.dim() > 0]
        if func in _INDEXING and not any(t.is_floating_point() for t in local):
            local = []  # CPU index tensors into a device tensor: torch moves them, on CUDA too
        if local and func not in (torch.ops.aten.copy_.default,):
            raise DeviceMismatch(f"{func}: Expected all tensors to be on the same device, but found tensors on "
                                 f"the second device and on cpu (shapes {[tuple(t.shape) for t in local]})")
        unwrap = lambda t: t.data_ if isinstance(t, Remote) else t  # noqa: E731
        args, kwargs = pytree.tree_map(unwrap, (args, kwargs))
        if _is_fake(kwargs.get("device")):
            kwargs["device"] = torch.device("cpu")
        out = func(*args, **kwargs)
        if func is torch.ops.aten.copy_.default and not isinstance(leaves[0], Remote):
            return out  # a copy into a CPU tensor stays on the CPU
        return pytree.tree_map(lambda t: Remote(t) if isinstance(t, torch.Tensor) else t, out)


def _fake_target(args, kwargs) -> bool:
    candidates = list(args) + [kwargs.get("device")]
    return any(isinstance(c, (str, torch.device)) and _is_fake(c) for c in candidates if c is not None)


class _Factories(TorchFunctionMode):
    """Factories and ``Tensor.to`` asked for the fake device make remote tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and isinstance(args[0], Remote):
            # torch turns list indices and scalar values into tensors on the indexed tensor's device: make them
            # on the CPU
            index = args[1]
            fixed = tuple(torch.tensor(i) if isinstance(i, list) else i for i in index) if isinstance(index, tuple) \
                else (torch.tensor(index) if isinstance(index, list) else index)
            args = (args[0], fixed, *args[2:])
            if func is torch.Tensor.__setitem__ and isinstance(args[2], (bool, int, float)):
                args = (*args[:2], torch.tensor(args[2], dtype=args[0].dtype))  # a 0-dim CPU value, as CUDA accepts
        if func is torch.Tensor.new_tensor and isinstance(args[0], Remote):
            return Remote(args[0].data_.new_tensor(*args[1:], **kwargs))
        if func is torch.Tensor.to and len(args) > 1 and isinstance(args[1], Remote):  # .to(other): other's device
            moved = args[0].to(args[1].dtype)
            return moved if isinstance(moved, Remote) else Remote(moved)
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args and _fake_target(args[1:], kwargs):
            source = args[0]
            if isinstance(source, Remote):
                return source
            rest = [torch.device("cpu") if isinstance(a, (str, torch.device)) and _is_fake(a) else a for a in args[1:]]
            kwargs = {**kwargs, **({"device": torch.device("cpu")} if "device" in kwargs else {})}
            return Remote(func(source, *rest, **kwargs))
        if func is torch.Tensor.numpy and args and isinstance(args[0], Remote):
            raise DeviceMismatch("can't convert a tensor of the second device to numpy; use .cpu() first")
        if _is_fake(kwargs.get("device")) and not (args and isinstance(args[0], torch.Tensor)
                                                   and func is not torch.as_tensor and func is not torch.tensor):
            kwargs = {**kwargs, "device": torch.device("cpu")}
            with torch._C.DisableTorchFunction():
                out = func(*args, **kwargs)
            return pytree.tree_map(lambda t: Remote(t) if isinstance(t, torch.Tensor) else t, out)
        if func in (torch.as_tensor, torch.tensor) and _is_fake(kwargs.get("device")):
            kwargs = {**kwargs, "device": torch.device("cpu")}
            return Remote(func(*args, **kwargs))
        return func(*args, **kwargs)


class _Autocast(torch.autocast):
    """``torch.autocast`` that treats the fake device as the CPU (torch has no autocast state for ``meta``)."""

    def __init__(self, device_type, *args, **kwargs):
        super().__init__("cpu" if device_type == FAKE.type else device_type, *args, **kwargs)


@contextlib.contextmanager
def remote_device():
    """Within: factories and ``.to`` asked for the fake device make :class:`Remote` tensors (and
    ``torch.autocast`` accepts that device, as libraries such as kornia open it on their input's device)."""
    real = torch.autocast
    torch.autocast = _Autocast
    try:
        with _Factories():
            yield FAKE
    finally:
        torch.autocast = real


def to_remote(module: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter and buffer of ``module`` (frozen: no gradients) to the second device, in place."""
    for sub in module.modules():
        for name, value in list(sub._parameters.items()):
            if value is not None:
                sub._parameters[name] = torch.nn.Parameter(Remote(value.detach()), requires_grad=False)
        for name, value in list(sub._buffers.items()):
            if value is not None:
                sub._buffers[name] = Remote(value)
    return module
