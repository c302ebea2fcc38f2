"""PyTorch support: tensors as leaves, in-place restore, ``load(framework="torch")``.

Imported (and registered) automatically once the program has imported
``torch``; nothing to call.

Saving. A ``torch.Tensor`` (or ``nn.Parameter``) anywhere in a state is
stored like a numpy array: detached, CUDA tensors copied to host once, CPU
tensors viewed without a copy (a non-contiguous tensor is made contiguous
chunk by chunk by the writer). Every torch dtype that numpy or ml_dtypes
knows round-trips bit-exactly: bool, int8-64, uint8-64, float16/32/64,
complex64/128, and through ml_dtypes ``bfloat16``, ``float8_e4m3fn``,
``float8_e5m2``, ``float8_e4m3fnuz``, ``float8_e5m2fnuz`` and
``float8_e8m0fnu`` (the bits are viewed, never converted). ``complex32``,
``float4_e2m1fn_x2``, the ``bits*`` types, sub-byte ints and quantized,
sparse, nested and meta tensors are refused with a TypeError naming the
leaf. Two entries that are the same tensor memory (same storage, offset,
shape, strides and dtype: tied weights) are stored once, and load as one
tensor again.

Restoring. A tensor inside a ``Checkpoint`` tree, or in ``cloudckpt.load(url,
target=tree)``, is restored in place: the same object, ``copy_`` under
``no_grad`` onto its own device and dtype. Objects with ``state_dict()`` /
``load_state_dict()`` (modules, optimizers, LR schedulers, ``GradScaler``)
get their saved state as torch CPU tensors (zero-copy views of what was
read); ``load_state_dict`` moves them to the parameters' devices. A fresh
optimizer (no state yet) accepts a restored optimizer state.
``cloudckpt.load(url, framework="torch", device=None)`` returns tensors.

Example:
    >>> import tempfile, torch, cloudckpt
    >>> d = tempfile.mkdtemp()
    >>> model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    >>> opt = torch.optim.Adam(model.parameters())
    >>> model(torch.ones(1, 3, dtype=torch.bfloat16)).sum().backward(); opt.step()
    >>> ckpt = cloudckpt.Checkpoint(model=model, optimizer=opt, step=1)
    >>> url = ckpt.write(d + "/ckpt-1")
    >>> state = cloudckpt.load(url, framework="torch")
    >>> state["model"]["weight"].dtype, state["optimizer"]["state"][0]["step"]
    (torch.bfloat16, tensor(1.))
    >>> model2 = torch.nn.Linear(3, 2).to(torch.bfloat16)
    >>> opt2 = torch.optim.Adam(model2.parameters())          # fresh: no state yet
    >>> w = model2.weight
    >>> cloudckpt.Checkpoint(model=model2, optimizer=opt2, step=0).read(url)
    >>> model2.weight is w, torch.equal(model2.weight, model.weight)
    (True, True)

A tensor in a plain tree is restored in place too:

    >>> t = torch.zeros(2, 2)
    >>> url = cloudckpt.save(d + "/t", {"t": torch.eye(2)})
    >>> out = cloudckpt.load(url, target={"t": t})
    >>> out["t"] is t, t.diagonal().tolist()
    (True, [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import ml_dtypes
import numpy as np
import torch

from cloudckpt.format import adapters
from cloudckpt.frameworks import map_arrays

__all__ = ["to_numpy", "from_numpy", "from_numpy_tree", "numpy_dtype", "torch_dtype"]

# torch dtypes numpy lacks: (integer dtype of the same width to view the bits through, ml_dtypes type)
_ML: dict[torch.dtype, tuple[torch.dtype, np.dtype]] = {}
for _name, _int in (
    ("bfloat16", torch.uint16),
    ("float8_e4m3fn", torch.uint8),
    ("float8_e5m2", torch.uint8),
    ("float8_e4m3fnuz", torch.uint8),
    ("float8_e5m2fnuz", torch.uint8),
    ("float8_e8m0fnu", torch.uint8),
):
    if hasattr(torch, _name) and hasattr(ml_dtypes, _name):
        _ML[getattr(torch, _name)] = (_int, np.dtype(getattr(ml_dtypes, _name)))
_FROM_ML = {np_dt: (t_dt, int_dt) for t_dt, (int_dt, np_dt) in _ML.items()}
_INT_NP: dict[torch.dtype, np.dtype] = {torch.uint16: np.dtype(np.uint16), torch.uint8: np.dtype(np.uint8)}

_NATIVE: dict[torch.dtype, np.dtype] = {
    torch.bool: np.dtype(bool),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.uint8: np.dtype(np.uint8),
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}
for _name in ("uint16", "uint32", "uint64"):
    if hasattr(torch, _name):
        _NATIVE[getattr(torch, _name)] = np.dtype(_name)
_TO_TORCH = {np_dt: t_dt for t_dt, np_dt in _NATIVE.items()}

_HINTS = {
    "complex32": "store .view(torch.float16) (real and imaginary parts as a trailing axis of 2) and view it back",
    "float4_e2m1fn_x2": "store .view(torch.uint8) (two float4 values per byte) and view it back",
}


def numpy_dtype(dtype: torch.dtype) -> np.dtype | None:
    """The numpy (or ml_dtypes) dtype a torch dtype is stored as, or None if it cannot be.

    Example:
        >>> numpy_dtype(torch.bfloat16), numpy_dtype(torch.int64), numpy_dtype(torch.complex32)
        (dtype(bfloat16), dtype('int64'), None)
    """
    if dtype in _NATIVE:
        return _NATIVE[dtype]
    if dtype in _ML:
        return _ML[dtype][1]
    return None


def torch_dtype(dtype: np.dtype) -> torch.dtype | None:
    """The torch dtype of a numpy/ml_dtypes dtype (any byte order), or None if torch lacks it.

    Example:
        >>> import ml_dtypes
        >>> torch_dtype(np.dtype(ml_dtypes.float8_e5m2)), torch_dtype(np.dtype(">f4")), torch_dtype(np.dtype("<U2"))
        (torch.float8_e5m2, torch.float32, None)
    """
    if dtype in _FROM_ML:
        return _FROM_ML[dtype][0]
    if dtype.kind in "biufc":
        return _TO_TORCH.get(dtype.newbyteorder("="))
    return None


def _refuse(x: torch.Tensor) -> str | None:
    if x.is_quantized:
        return "quantized tensors are not supported; store x.int_repr(), x.q_scale() and x.q_zero_point()"
    if x.layout != torch.strided:
        return f"{x.layout} tensors are not supported; store x.to_dense() (or the index and value tensors)"
    if x.is_nested:
        return "nested tensors are not supported; store their components"
    if x.device.type == "meta":
        return "a meta tensor has no data to save"
    if numpy_dtype(x.dtype) is None:
        name = str(x.dtype).removeprefix("torch.")
        return f"torch dtype {name} has no numpy equivalent; " + _HINTS.get(name, "convert it to a supported dtype")
    return None


def to_numpy(x: Any) -> np.ndarray | None:
    """A torch tensor as a numpy array (a view of CPU memory when possible); None for anything else.

    Raises TypeError for tensors that cannot be stored (see the module docs).

    Example:
        >>> a = to_numpy(torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).t())
        >>> a.dtype, a.shape, float(a[2, 1])
        (dtype(bfloat16), (3, 2), 5.0)
    """
    if not isinstance(x, torch.Tensor):
        return None
    reason = _refuse(x)
    if reason:
        raise TypeError(f"a torch tensor of dtype {x.dtype} on {x.device}: {reason}")
    t = x.detach()
    if t.device.type != "cpu":
        t = t.cpu()  # the one copy to host
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if t.dtype in _ML:
        int_dt, np_dt = _ML[t.dtype]
        return t.view(int_dt).numpy().view(np_dt)
    return t.numpy()


def _describe(x: Any) -> tuple[tuple[int, ...], np.dtype | None] | None:
    if not isinstance(x, torch.Tensor):
        return None
    return tuple(x.shape), numpy_dtype(x.dtype)


def _alias_key(x: Any) -> Hashable | None:
    if not isinstance(x, torch.Tensor) or x.numel() == 0 or x.layout != torch.strided or x.is_quantized:
        return None
    if x.is_nested or x.device.type == "meta":
        return None
    try:
        ptr = x.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a real storage
        return None
    return ("torch", str(x.device), ptr, x.storage_offset(), tuple(x.shape), tuple(x.stride()), x.dtype)


def from_numpy(arr: np.ndarray, device: Any = None) -> torch.Tensor | None:
    """A numpy array as a torch tensor (sharing its memory on CPU), or None if torch lacks its dtype.

    Example:
        >>> import ml_dtypes
        >>> from_numpy(np.ones(2, ml_dtypes.bfloat16))
        tensor([1., 1.], dtype=torch.bfloat16)
    """
    t_dt = torch_dtype(arr.dtype)
    if t_dt is None:
        return None
    if not arr.flags.writeable:  # torch may write into it (an optimizer step)
        arr = arr.copy()
    if arr.dtype in _FROM_ML:
        int_dt = _FROM_ML[arr.dtype][1]
        t = torch.from_numpy(arr.view(_INT_NP[int_dt])).view(t_dt)
    else:
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if any(s < 0 for s in arr.strides) or any(s % arr.itemsize for s in arr.strides):
            arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr)
    if device is not None:
        t = t.to(device)
    return t


def from_numpy_tree(state: Any, *, device: Any = None) -> Any:
    """``state`` with every numpy array torch can hold as a tensor (one tensor per array object).

    Example:
        >>> from_numpy_tree({"w": np.zeros(2, np.float32), "tag": "x", "s": (np.int64(3),)})
        {'w': tensor([0., 0.]), 'tag': 'x', 's': (np.int64(3),)}
    """
    return map_arrays(state, lambda x: from_numpy(x, device))


def _restore(target: torch.Tensor, value: Any) -> None:
    src = from_numpy(value) if isinstance(value, np.ndarray) else None
    if src is None:
        raise TypeError(f"cannot restore a {type(value).__name__} of dtype {getattr(value, 'dtype', '?')} into a torch tensor")
    with torch.no_grad():
        target.copy_(src)


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _has_tensor(x: Any, depth: int = 0) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if depth > 50:
        return False
    if isinstance(x, dict):
        return any(_has_tensor(v, depth + 1) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_has_tensor(v, depth + 1) for v in x)
    return False


_OBJECT_TYPES: tuple[type, ...] = (torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
    _OBJECT_TYPES = (*_OBJECT_TYPES, torch.amp.GradScaler)


def _is_torch_object(obj: Any) -> bool:
    if isinstance(obj, _OBJECT_TYPES) or type(obj).__module__.split(".")[0] == "torch":
        return True
    try:  # duck-typed objects whose state holds tensors (torchmetrics, user classes)
        return _has_tensor(obj.state_dict())
    except Exception:
        return False


def _convert_state(obj: Any, saved: Any) -> Any:
    return from_numpy_tree(saved)


adapters.register(
    to_numpy,
    is_tensor=_is_tensor,
    restore=_restore,
    describe=_describe,
    alias_key=_alias_key,
    is_object=_is_torch_object,
    convert_state=_convert_state,
)
