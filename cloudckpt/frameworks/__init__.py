"""Framework support: PyTorch and JAX tensors as checkpoint leaves.

Nothing to call: the first time cloudckpt meets a leaf after the program has
imported ``torch`` or ``jax``, :mod:`cloudckpt.format.adapters` imports
:mod:`cloudckpt.frameworks.torch` / :mod:`cloudckpt.frameworks.jax`, which
register themselves. The core never imports a framework itself.

* Saving: torch tensors and jax arrays anywhere in a state are stored like
  numpy arrays (bfloat16 and float8 exactly, through ml_dtypes).
* ``cloudckpt.load(url, framework="torch")`` / ``framework="jax"`` returns
  the state with framework tensors instead of numpy arrays
  (:func:`convert`); ``device=`` places them.
* ``cloudckpt.load(url, target=tree)`` and ``Checkpoint`` restore into live
  objects: torch tensors in place, jax arrays by rebinding (placed with the
  target's sharding), NamedTuples (optax states) rebuilt as the target's type.

Example:
    >>> import numpy as np
    >>> convert({"w": np.ones(2), "step": 3}, "numpy")
    {'w': array([1., 1.]), 'step': 3}
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["FRAMEWORKS", "convert", "map_arrays", "require"]

FRAMEWORKS = ("numpy", "torch", "jax")
_INSTALL = {"torch": "pip install 'cloudckpt[torch]' (or torch itself)", "jax": "pip install 'cloudckpt[jax]'"}


def map_arrays(state: Any, fn: Callable[[np.ndarray], Any]) -> Any:
    """``state`` with every numpy array ``a`` replaced by ``fn(a)`` (kept
    when that is None), in dict/list/tuple trees. An array object that appears
    twice is converted once, so tied entries stay one object.

    Example:
        >>> a = np.zeros(1)
        >>> out = map_arrays({"x": a, "y": [a, "s"]}, lambda v: v + 1)
        >>> out["x"] is out["y"][0], out["y"][1]
        (True, 's')
    """
    memo: dict[int, Any] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            if id(x) not in memo:
                converted = fn(x)
                memo[id(x)] = x if converted is None else converted
            return memo[id(x)]
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, tuple):
            return tuple(walk(v) for v in x)
        return x

    return walk(state)


def _module(framework: str) -> Any:
    if framework not in FRAMEWORKS[1:]:
        raise ValueError(f"framework must be one of {', '.join(map(repr, FRAMEWORKS))}, got {framework!r}")
    try:
        importlib.import_module(framework)
    except ImportError as exc:
        raise ImportError(f"framework={framework!r} needs {framework}, which is not installed ({exc}); {_INSTALL[framework]}") from None
    return importlib.import_module(f"cloudckpt.frameworks.{framework}")


def require(framework: str | None) -> None:
    """Check that ``framework`` is a known name and, unless numpy, installed (ValueError / ImportError).

    Example:
        >>> require("numpy"); require(None)
        >>> require("tensorflow")
        Traceback (most recent call last):
        ...
        ValueError: framework must be one of 'numpy', 'torch', 'jax', got 'tensorflow'
    """
    if framework is not None and framework != "numpy":
        _module(framework)


def convert(state: Any, framework: str | None, *, device: Any = None) -> Any:
    """``state`` (as ``cloudckpt.load`` returns it) with its numpy arrays as ``framework`` tensors.

    ``framework`` is ``"torch"``, ``"jax"``, or ``"numpy"``/None (unchanged).
    ``device``: a torch device (``"cuda:0"``), or a ``jax.Device`` or
    ``jax.sharding.Sharding``; default the framework's default device.
    Arrays whose dtype the framework lacks (strings, datetimes; for JAX
    without x64 also 64-bit types) stay numpy arrays; numpy scalars and JSON
    values are unchanged. Arrays that are one object in ``state`` (tied
    weights) become one tensor.
    """
    if framework is None or framework == "numpy":
        if device is not None:
            raise ValueError("device= needs framework='torch' or framework='jax'")
        return state
    return _module(framework).from_numpy_tree(state, device=device)
