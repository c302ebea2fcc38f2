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
]

log = logging.getLogger("cloudckpt")

_ADAPTERS: list[Callable[[Any], Any]] = []
_INPLACE: list[tuple[Callable[[Any], bool], Callable[[Any, Any], None]]] = []
_REBIND: list[tuple[Callable[[Any], bool], Callable[[Any, Any], Any]]] = []
_DESCRIBE: list[Callable[[Any], Any]] = []
_ALIAS: list[Callable[[Any], Hashable | None]] = []
_STATE: list[tuple[Callable[[Any], bool], Callable[[Any, Any], Any]]] = []

# framework module name -> the cloudckpt module that registers it
_LAZY = {"torch": "cloudckpt.frameworks.torch", "jax": "cloudckpt.frameworks.jax"}
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
    ``obj.load_state_dict``.
    """
    with _lock:
        if adapter is not None and adapter not in _ADAPTERS:
            _ADAPTERS.append(adapter)
        if is_tensor is not None and restore is not None:
            _INPLACE.append((is_tensor, restore))
        if is_tensor is not None and rebind is not None:
            _REBIND.append((is_tensor, rebind))
        if describe is not None:
            _DESCRIBE.append(describe)
        if alias_key is not None:
            _ALIAS.append(alias_key)
        if is_object is not None and convert_state is not None:
            _STATE.append((is_object, convert_state))


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
