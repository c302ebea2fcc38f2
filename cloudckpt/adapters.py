"""Registries that let framework tensors (torch, jax) act as leaves.

The core never imports a framework. ``cloudckpt.frameworks`` registers, for
each framework found installed, a *leaf adapter* (tensor -> numpy array, for
saving) and an *in-place restorer* (copy a loaded numpy array into a live
tensor). Until then both registries are empty and only numpy leaves exist.

Example:
    >>> to_numpy(object()) is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register", "to_numpy", "inplace_target", "restore_inplace"]

_ADAPTERS: list[Callable[[Any], Any]] = []
_INPLACE: list[tuple[Callable[[Any], bool], Callable[[Any, Any], None]]] = []


def register(
    adapter: Callable[[Any], Any] | None = None,
    *,
    is_tensor: Callable[[Any], bool] | None = None,
    restore: Callable[[Any, Any], None] | None = None,
) -> None:
    """Register a leaf adapter and/or an in-place restorer (``is_tensor`` + ``restore``)."""
    if adapter is not None and adapter not in _ADAPTERS:
        _ADAPTERS.append(adapter)
    if is_tensor is not None and restore is not None:
        _INPLACE.append((is_tensor, restore))


def to_numpy(x: Any) -> Any:
    """``x`` as a numpy array if a registered adapter knows it, else None."""
    for adapt in _ADAPTERS:
        out = adapt(x)
        if out is not None:
            return out
    return None


def inplace_target(x: Any) -> bool:
    """Whether ``x`` is a framework tensor that can be restored in place."""
    return any(pred(x) for pred, _ in _INPLACE)


def restore_inplace(target: Any, value: Any) -> bool:
    """Copy ``value`` (numpy) into the framework tensor ``target``; False if no restorer applies."""
    for pred, restore in _INPLACE:
        if pred(target):
            restore(target, value)
            return True
    return False
