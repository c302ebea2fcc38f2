"""Registries that let framework tensors (torch, jax) act as leaves.

The core never imports a framework. ``cloudckpt.frameworks`` registers, for
each framework, a *leaf adapter* (tensor -> numpy array, for saving) and a
way to restore a loaded numpy array into a live tensor: *in place* (torch:
the same tensor object, ``copy_``) or by *rebinding* (jax arrays are
immutable: a new array placed like the old one). It also registers cheap
shape/dtype queries, the identity of a tensor's memory (tied weights are
stored once) and a converter of loaded state for the framework's objects
(a torch optimizer's ``load_state_dict`` wants tensors, not numpy arrays).

Registration is lazy and needs no setup call: every function here first
checks ``sys.modules`` and, for each framework the program has imported
(``torch``, ``jax``), imports its ``cloudckpt.frameworks`` module once, which
registers it. A program that never imports torch never loads it.

Example:
    >>> to_numpy(object()) is None
    True
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any

__all__ = [
    "register",
    "to_numpy",
    "inplace_target",
    "restore_inplace",
    "is_tensor",
    "rebind",
    "describe",
    "alias_key",
    "state_for",
    "wanted_boxes",
    "restore_in_place",
]

log = logging.getLogger("cloudckpt")

_ADAPTERS: list[Callable[[Any], Any]] = []
_INPLACE: list[tuple[Callable[[Any], bool], Callable[[Any, Any], None]]] = []
_REBIND: list[tuple[Callable[[Any], bool], Callable[[Any, Any], Any]]] = []
_DESCRIBE: list[Callable[[Any], Any]] = []
_ALIAS: list[Callable[[Any], Hashable | None]] = []
_STATE: list[tuple[Callable[[Any], bool], Callable[[Any, Any], Any]]] = []
_WANTED: list[Callable[[Any], Any]] = []
_IN_PLACE: list[Callable[[Any], bool]] = []

# framework module name -> the cloudckpt module that registers it
_LAZY = {
    "torch": "cloudckpt.frameworks.torch",
    "torch.distributed.tensor": "cloudckpt.frameworks.torch_dist",  # after torch (dict order)
    "jax": "cloudckpt.frameworks.jax",
}
_pending = dict(_LAZY)
_lock = threading.RLock()


def _autoload() -> None:
    """Register every framework the program has imported (once each)."""
    if not _pending:
        return
    if not any(name in sys.modules for name in _pending):
        return
    with _lock:  # other threads wait here until the registration is complete
        for name in [n for n in _pending if n in sys.modules]:
            try:
                importlib.import_module(_pending[name])
            except Exception as exc:  # a broken framework install must not break numpy users
                log.warning("cloudckpt: could not enable %s support (%s: %s)", name, type(exc).__name__, exc)
            finally:
                _pending.pop(name, None)


def register(
    adapter: Callable[[Any], Any] | None = None,
    *,
    is_tensor: Callable[[Any], bool] | None = None,
    restore: Callable[[Any, Any], None] | None = None,
    rebind: Callable[[Any, Any], Any] | None = None,
    describe: Callable[[Any], Any] | None = None,
    alias_key: Callable[[Any], Hashable | None] | None = None,
    is_object: Callable[[Any], bool] | None = None,
    convert_state: Callable[[Any, Any], Any] | None = None,
    wanted_boxes: Callable[[Any], Any] | None = None,
    restore_in_place: Callable[[Any], bool] | None = None,
    first: bool = False,
) -> None:
    """Register the pieces of one framework's support (each optional).

    ``adapter(x)``: ``x`` as a numpy array, or None if ``x`` is not this
    framework's. ``is_tensor`` + ``restore(target, value)``: copy a numpy
    array into a live tensor in place. ``is_tensor`` + ``rebind(target,
    value)``: a new tensor holding ``value``, placed like ``target``.
    ``describe(x)``: ``(shape, numpy dtype or None)`` without copying data,
    or None. ``alias_key(x)``: a hashable identity of the memory ``x`` views
    (equal keys: tied tensors, stored once), or None. ``is_object`` +
    ``convert_state(obj, saved)``: the loaded state converted for
    ``obj.load_state_dict``. ``wanted_boxes(x)``: the boxes of a
    distributed tensor this process holds (restore reads only those), or
    None. ``restore_in_place(obj)``: whether an object's state is restored
    into its own ``state_dict()`` in place, then loaded (distributed
    tensors), after preparing it. ``first``: ahead of the registrations
    made before (a distributed tensor type is also a tensor type).
    """

    def add(registry: list[Any], item: Any) -> None:
        if item not in registry:
            registry.insert(0, item) if first else registry.append(item)

    with _lock:
        if adapter is not None:
            add(_ADAPTERS, adapter)
        if is_tensor is not None and restore is not None:
            add(_INPLACE, (is_tensor, restore))
        if is_tensor is not None and rebind is not None:
            add(_REBIND, (is_tensor, rebind))
        if describe is not None:
            add(_DESCRIBE, describe)
        if alias_key is not None:
            add(_ALIAS, alias_key)
        if is_object is not None and convert_state is not None:
            add(_STATE, (is_object, convert_state))
        if wanted_boxes is not None:
            add(_WANTED, wanted_boxes)
        if restore_in_place is not None:
            add(_IN_PLACE, restore_in_place)


def to_numpy(x: Any) -> Any:
    """``x`` as a numpy array if a registered adapter knows it, else None."""
    _autoload()
    for adapt in _ADAPTERS:
        out = adapt(x)
        if out is not None:
            return out
    return None


def alias_key(x: Any) -> Hashable | None:
    """A hashable identity of the memory the framework tensor ``x`` views, or None.

    Two leaves with equal keys are the same tensor (tied weights): stored once.
    """
    _autoload()
    for key in _ALIAS:
        out = key(x)
        if out is not None:
            return out
    return None


# tree.flatten looks for this attribute on its ``adapt`` argument
to_numpy.alias_key = alias_key  # type: ignore[attr-defined]


def inplace_target(x: Any) -> bool:
    """Whether ``x`` is a framework tensor that can be restored in place."""
    _autoload()
    return any(pred(x) for pred, _ in _INPLACE)


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a framework tensor (restored in place or by rebinding)."""
    _autoload()
    return any(pred(x) for pred, _ in _INPLACE) or any(pred(x) for pred, _ in _REBIND)


def describe(x: Any) -> Any:
    """``(shape, numpy dtype or None)`` of a framework tensor, without copying it; None if unknown."""
    _autoload()
    for d in _DESCRIBE:
        out = d(x)
        if out is not None:
            return out
    return None


def restore_inplace(target: Any, value: Any) -> bool:
    """Copy ``value`` (numpy) into the framework tensor ``target``; False if no restorer applies."""
    _autoload()
    for pred, restore in _INPLACE:
        if pred(target):
            restore(target, value)
            return True
    return False


def rebind(target: Any, value: Any) -> Any:
    """A new framework tensor holding ``value``, placed like ``target``; ``value`` itself if none applies."""
    _autoload()
    for pred, fn in _REBIND:
        if pred(target):
            return fn(target, value)
    return value


def state_for(obj: Any, saved: Any) -> Any:
    """The loaded state ``saved`` converted for ``obj.load_state_dict`` (unchanged if no framework claims ``obj``)."""
    _autoload()
    for pred, convert in _STATE:
        if pred(obj):
            return convert(obj, saved)
    return saved


def wanted_boxes(x: Any) -> Any:
    """The boxes ``[(offset, shape), ...]`` of the global array that the
    distributed tensor ``x`` holds in this process, or None (not distributed:
    the whole array).

    Example:
        >>> wanted_boxes(object()) is None
        True
    """
    _autoload()
    for fn in _WANTED:
        out = fn(x)
        if out is not None:
            return out
    return None


def restore_in_place(obj: Any) -> bool:
    """Whether ``obj`` (a module, an optimizer) is restored by copying into its
    own ``state_dict()`` in place and loading that (its state holds
    distributed tensors). A framework may prepare ``obj`` first (a fresh
    optimizer gets its zero state).

    Example:
        >>> restore_in_place(object())
        False
    """
    _autoload()
    return any(fn(obj) for fn in _IN_PLACE)
