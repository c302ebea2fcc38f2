"""The options of a :class:`~cloudckpt.CheckpointManager`, checked once, and the numbers users give.

Numbers given by the user (``checkpoint_number``, ``step_counter``, ...) may
be anything ``int()`` or ``operator.index()`` takes: ints, 0-d numpy arrays,
torch scalar tensors (:func:`as_int`).

Example:
    >>> import numpy as np
    >>> as_int(np.array(7), "step"), evaluate_step(lambda: 3)
    (7, 3)
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloudckpt.layout.names import check_checkpoint_name

__all__ = ["DEFAULT_MAX_TO_KEEP", "as_int", "evaluate_step", "json_metrics", "Settings"]

#: ``max_to_keep`` when it is not given (TF requires it).
DEFAULT_MAX_TO_KEEP = 5


def as_int(value: Any, what: str) -> int:
    """``value`` as an int, if ``int()`` takes it without losing anything; TypeError naming ``what`` if not.

    Example:
        >>> import numpy as np
        >>> as_int(np.int64(3), "n"), as_int(4.0, "n")
        (3, 4)
        >>> as_int(True, "checkpoint_number")
        Traceback (most recent call last):
        ...
        TypeError: checkpoint_number must be an integer, got bool
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got bool")
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        if isinstance(value, np.ndarray) and value.ndim == 0:
            return int(value.item())
        if hasattr(value, "item") and callable(value.item):
            item = value.item()
            if isinstance(item, float) and not item.is_integer():
                raise TypeError(f"{what} must be an integer, got {item!r}")
            return int(item)
        if isinstance(value, float):
            if not value.is_integer():
                raise TypeError(f"{what} must be an integer, got {value!r}")
            return int(value)
        return int(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be an integer (anything int() takes), got {type(value).__name__}") from None


def evaluate_step(step_counter: Any) -> int:
    """The current value of a ``step_counter`` (a number, a 0-d array, or a zero-argument callable).

    Example:
        >>> evaluate_step(5), evaluate_step(lambda: 6)
        (5, 6)
    """
    value = step_counter() if callable(step_counter) else step_counter
    return as_int(value, "step_counter")


def json_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` as JSON scalars for the manifest (NaN becomes None); TypeError or ValueError if not.

    Example:
        >>> import numpy as np
        >>> json_metrics({"loss": np.float32(0.5), "bad": float("nan")})
        {'loss': 0.5, 'bad': None}
    """
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise TypeError(f"metric names must be str, got {k!r}")
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else v
        if v is not None and not isinstance(v, (bool, int, float, str)):
            raise TypeError(f"metric {k!r} must be a JSON scalar, got {type(v).__name__}")
        if isinstance(v, float) and math.isinf(v):
            raise ValueError(f"metric {k!r} is infinite; JSON cannot hold it")
        out[k] = v
    return out


@dataclass(frozen=True)
class Settings:
    """The manager's options that decide numbering, intervals and retention, checked by :meth:`check`.

    Example:
        >>> Settings.check(max_to_keep=3).max_to_keep
        3
        >>> Settings.check(max_to_keep=0)
        Traceback (most recent call last):
        ...
        ValueError: Expected a positive integer or None for max_to_keep, got 0
    """

    max_to_keep: int | None = DEFAULT_MAX_TO_KEEP
    keep_hours: float | None = None
    checkpoint_name: str = "ckpt"
    step_counter: Any = None
    checkpoint_interval: int | None = None
    init_fn: Callable[[], Any] | None = None
    last_checkpoint_step: int | None = None
    clock: Callable[[], float] = time.time
    best_metric: str | None = None
    best_mode: str = "max"

    @classmethod
    def check(
        cls,
        *,
        max_to_keep: Any = DEFAULT_MAX_TO_KEEP,
        keep_checkpoint_every_n_hours: float | None = None,
        checkpoint_name: str = "ckpt",
        step_counter: Any = None,
        checkpoint_interval: Any = None,
        init_fn: Callable[[], Any] | None = None,
        last_checkpoint_step: Any = None,
        clock: Callable[[], float] = time.time,
        best_metric: str | None = None,
        best_mode: str = "max",
    ) -> Settings:
        """The settings, or the TypeError / ValueError of the first option that is wrong."""
        if max_to_keep is not None:
            max_to_keep = as_int(max_to_keep, "max_to_keep")
            if max_to_keep <= 0:
                raise ValueError(f"Expected a positive integer or None for max_to_keep, got {max_to_keep}")
        hours = keep_checkpoint_every_n_hours
        if hours is not None:
            if isinstance(hours, bool) or not isinstance(hours, (int, float)):
                raise TypeError("keep_checkpoint_every_n_hours must be a number of hours or None")
            if not hours > 0 or math.isinf(hours):
                raise ValueError(f"keep_checkpoint_every_n_hours must be a positive, finite number of hours, got {hours}")
        check_checkpoint_name(checkpoint_name)
        if checkpoint_interval is not None:
            if step_counter is None:
                raise ValueError("`step_counter` should be passed if `checkpoint_interval` is not None.")
            checkpoint_interval = as_int(checkpoint_interval, "checkpoint_interval")
            if checkpoint_interval <= 0:
                raise ValueError(f"checkpoint_interval must be a positive number of steps, got {checkpoint_interval}")
        if step_counter is not None and not callable(step_counter):
            evaluate_step(step_counter)  # fails now, not at the first save
        if last_checkpoint_step is not None:
            last_checkpoint_step = as_int(last_checkpoint_step, "last_checkpoint_step")
        if init_fn is not None and not callable(init_fn):
            raise TypeError("init_fn must be a zero-argument callable or None")
        if not callable(clock):
            raise TypeError("clock must be a zero-argument callable returning seconds since the epoch")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if best_metric is not None and not isinstance(best_metric, str):
            raise TypeError("best_metric must be the name of a metric (str) or None")
        return cls(
            max_to_keep, hours, checkpoint_name, step_counter, checkpoint_interval, init_fn,
            last_checkpoint_step, clock, best_metric, best_mode,
        )
