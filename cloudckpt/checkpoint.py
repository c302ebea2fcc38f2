"""``Checkpoint``: named training objects saved together and restored in place.

A value given to ``Checkpoint(name=value)`` is one of

* a numpy array, or a dict / list / tuple tree holding arrays and scalars —
  restored *in place*: the same array objects afterwards, values overwritten;
  torch tensors too (``copy_`` onto their own device); jax arrays, being
  immutable, are replaced by new arrays with the same sharding (read
  ``ckpt.params`` after a restore); NamedTuples are rebuilt as their class;
* an object with ``state_dict()`` / ``load_state_dict()`` (torch modules and
  optimizers, anything duck-typed) — it receives its whole saved state dict;
* a JSON scalar or numpy scalar — restored by rebinding the attribute
  (``ckpt.step`` is the restored value).

``ckpt.save_counter`` counts the saves made through a manager; it is stored
in the checkpoint and restored with it. A checkpoint written by a
``Checkpoint`` is an ordinary checkpoint: ``cloudckpt.load(path)`` returns a
dict with one entry per name plus ``save_counter``.

Restore is strict (like TF's ``assert_consumed``): names or leaves missing on
either side, or arrays of another shape or dtype, raise one ValueError listing
all of them before anything is overwritten. ``partial=True`` restores the
intersection and logs what was left out.

Example:
    >>> import numpy as np, cloudckpt
    >>> w = np.zeros(3)
    >>> ckpt = cloudckpt.Checkpoint(w=w, step=0)
    >>> w[:] = 1; ckpt.step = 5
    >>> url = ckpt.write("memory://doc-ckpt/one")
    >>> w[:] = 7; ckpt.step = 9
    >>> ckpt.read(url)
    >>> w, ckpt.step
    (array([1., 1., 1.]), 5)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cloudckpt.distributed.group import agree, resolve_group
from cloudckpt.format import adapters
from cloudckpt.format.shards import Box, PerRank, ShardedArray
from cloudckpt.format.tensor_store import StoreOptions
from cloudckpt.format.tree import Path, flatten, format_path
from cloudckpt.layout.checkpoint_io import read_manifest, read_state, write_checkpoint
from cloudckpt.storage import open_storage

__all__ = ["Checkpoint", "restore_into", "regions_of"]

log = logging.getLogger("cloudckpt")
_RESERVED = {"save_counter"}

def _has_state_dict(x: Any) -> bool:
    return callable(getattr(x, "state_dict", None)) and callable(getattr(x, "load_state_dict", None))


class _Mismatch:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.skipped: list[str] = []


def regions_of(tree: Any) -> dict[Path, list[Box]]:
    """The boxes each distributed tensor of a live tree holds in this
    process, by leaf path: what a restore into it must read.

    Example:
        >>> regions_of({"w": np.zeros(2)})
        {}
    """
    out: dict[Path, list[Box]] = {}

    def walk(x: Any, path: Path, depth: int) -> None:
        if depth > 200 or isinstance(x, (np.ndarray, str, bytes, int, float, type(None))):
            return
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, (*path, k), depth + 1)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, (*path, i), depth + 1)
        else:
            boxes = adapters.wanted_boxes(x)
            if boxes is not None:
                out[path] = boxes

    walk(tree, (), 0)
    return out


def _check(target: Any, saved: Any, path: Path, mm: _Mismatch, partial: bool) -> None:
    """Compare a live tree with a saved one; record every problem."""
    where = format_path(path)
    if isinstance(target, PerRank) or isinstance(saved, PerRank):
        if isinstance(saved, PerRank) and saved.is_missing:
            return
        _check(target.value if isinstance(target, PerRank) else target, saved.value if isinstance(saved, PerRank) else saved, path, mm, partial)
        return
    if isinstance(target, np.ndarray) or adapters.is_tensor(target):
        if not isinstance(saved, (np.ndarray, ShardedArray)):
            mm.problems.append(f"{where}: the checkpoint holds a {type(saved).__name__}, not an array")
            return
        t_shape = tuple(target.shape)
        t_dtype = _dtype_of(target)
        if t_shape != saved.shape or (t_dtype is not None and t_dtype != saved.dtype):
            mm.problems.append(
                f"{where}: shape {t_shape} dtype {t_dtype} here, shape {saved.shape} dtype {saved.dtype} in the checkpoint"
            )
        return
    if isinstance(target, dict):
        if not isinstance(saved, dict):
            mm.problems.append(f"{where}: a dict here, a {type(saved).__name__} in the checkpoint")
            return
        for k in target:
            if k not in saved:
                (mm.skipped if partial else mm.problems).append(f"{format_path((*path, k))}: missing from the checkpoint")
            else:
                _check(target[k], saved[k], (*path, k), mm, partial)
        for k in saved:
            if k not in target:
                (mm.skipped if partial else mm.problems).append(f"{format_path((*path, k))}: in the checkpoint but not here")
        return
    if isinstance(target, (list, tuple)):
        if not isinstance(saved, (list, tuple)):
            mm.problems.append(f"{where}: a {type(target).__name__} here, a {type(saved).__name__} in the checkpoint")
            return
        if len(target) != len(saved):
            mm.problems.append(f"{where}: {len(target)} items here, {len(saved)} in the checkpoint")
            return
        for i, (t, s) in enumerate(zip(target, saved, strict=True)):
            _check(t, s, (*path, i), mm, partial)
        return
    if isinstance(saved, (dict, list, tuple)) or (isinstance(saved, np.ndarray) and saved.ndim > 0):
        mm.problems.append(f"{where}: a {type(target).__name__} here, a {type(saved).__name__} in the checkpoint")


def _dtype_of(x: Any) -> np.dtype | None:
    if isinstance(x, np.ndarray):
        return x.dtype
    described = adapters.describe(x)  # without copying a GPU tensor to host
    if described is not None:
        return described[1]
    converted = adapters.to_numpy(x)
    return converted.dtype if isinstance(converted, np.ndarray) else None


def _apply(target: Any, saved: Any, partial: bool) -> Any:
    """Restore ``saved`` into ``target`` in place where possible; return the value for the parent."""
    if isinstance(saved, PerRank) and saved.is_missing:
        log.warning("no value was saved for this rank (the checkpoint has fewer ranks): the PerRank value is kept")
        return target
    if isinstance(target, PerRank):
        target.value = _apply(target.value, saved.value if isinstance(saved, PerRank) else saved, partial)
        return target
    if isinstance(saved, PerRank):
        saved = saved.value
    if isinstance(target, np.ndarray):
        if isinstance(saved, np.ndarray) and saved.shape == target.shape:
            np.copyto(target, saved, casting="no" if saved.dtype == target.dtype else "unsafe")
            return target
        return target
    if adapters.restore_inplace(target, saved):
        return target
    if adapters.is_tensor(target):  # immutable (jax): a new array placed like the target
        return adapters.rebind(target, saved)
    if isinstance(target, dict) and isinstance(saved, dict):
        for k in list(target):
            if k in saved:
                target[k] = _apply(target[k], saved[k], partial)
        return target
    if isinstance(target, list) and isinstance(saved, (list, tuple)):
        for i in range(len(target)):
            target[i] = _apply(target[i], saved[i], partial)
        return target
    if isinstance(target, tuple) and isinstance(saved, (list, tuple)):
        items = [_apply(t, s, partial) for t, s in zip(target, saved, strict=True)]
        return type(target)(*items) if hasattr(type(target), "_fields") else type(target)(items)
    return saved


def restore_into(target: Any, saved: Any, *, partial: bool = False, source: str = "") -> Any:
    """Restore a loaded tree ``saved`` into the live tree ``target`` and return the restored tree.

    numpy arrays and torch tensors of ``target`` are overwritten in place (the
    same objects); jax arrays are replaced by new arrays with the target's
    sharding; NamedTuples are rebuilt as the target's class; other leaves take
    the saved value. Strict unless ``partial``: one ValueError lists every
    missing or extra key and every shape or dtype mismatch, before anything
    is changed.

    Example:
        >>> w = np.zeros(2)
        >>> out = restore_into({"w": w, "n": 0}, {"w": np.ones(2), "n": 4})
        >>> out["w"] is w, w, out["n"]
        (True, array([1., 1.]), 4)
    """
    mm = _Mismatch()
    _check(target, saved, (), mm, partial)
    if mm.problems:
        listing = "\n  ".join(mm.problems)
        raise ValueError(
            f"cannot restore {source or 'the checkpoint'} into the target: they do not match "
            f"(nothing was changed):\n  {listing}"
        )
    if mm.skipped:
        log.warning("partial restore of %s left out: %s", source, "; ".join(mm.skipped))
    return _apply(target, saved, partial)


class Checkpoint:
    """A named collection of training objects that are saved and restored together.

    See the module docstring. Attribute access reads and rebinds the named
    objects: ``ckpt.step``, ``ckpt.step = 3``.

    Example:
        >>> import numpy as np
        >>> ckpt = Checkpoint(model={"w": np.ones(2)}, step=0)
        >>> sorted(ckpt.state())
        ['model', 'save_counter', 'step']
    """

    def __init__(self, **objects: Any) -> None:
        bad = _RESERVED & set(objects)
        if bad:
            raise ValueError(f"Checkpoint names {sorted(bad)} are reserved; use other names")
        object.__setattr__(self, "_objects", dict(objects))
        object.__setattr__(self, "save_counter", 0)

    def __getattr__(self, name: str) -> Any:
        objects = self.__dict__.get("_objects", {})
        if name in objects:
            return objects[name]
        raise AttributeError(f"Checkpoint has no object named {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "save_counter":
            object.__setattr__(self, name, int(value))
        elif name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._objects[name] = value

    def __repr__(self) -> str:
        return f"Checkpoint({', '.join(self._objects)}; save_counter={self.save_counter})"

    @property
    def names(self) -> list[str]:
        """The names of the objects, in order.

        Example:
            >>> import numpy as np
            >>> Checkpoint(model={"w": np.ones(2)}, step=0).names
            ['model', 'step']
        """
        return list(self._objects)

    def state(self) -> dict[str, Any]:
        """The state to save: one entry per name (state dicts for objects that have one)
        plus ``save_counter``.

        Example:
            >>> import numpy as np
            >>> class Model:
            ...     def state_dict(self): return {"w": np.zeros(2)}
            ...     def load_state_dict(self, state): pass
            >>> Checkpoint(model=Model(), step=3).state()
            {'model': {'w': array([0., 0.])}, 'step': 3, 'save_counter': 0}
        """
        out: dict[str, Any] = {}
        for name, obj in self._objects.items():
            out[name] = obj.state_dict() if _has_state_dict(obj) else obj
        out["save_counter"] = int(self.save_counter)
        return out

    def restore_targets(self) -> dict[str, Any]:
        """What each object is restored into: its own ``state_dict()`` for
        objects restored in place (their state holds distributed tensors; a
        fresh optimizer gets its zero state first), else the object itself.

        Example:
            >>> Checkpoint(w=np.zeros(1)).restore_targets()
            {'w': array([0.])}
        """
        return {name: obj.state_dict() if _has_state_dict(obj) and adapters.restore_in_place(obj) else obj
                for name, obj in self._objects.items()}

    def restore_state(
        self, saved: dict[str, Any], *, partial: bool = False, source: str = "", targets: dict[str, Any] | None = None
    ) -> None:
        """Restore from a loaded state dict (as returned by ``cloudckpt.load``).

        In place, strict unless ``partial`` (see the module docstring);
        ``source`` names the checkpoint in error messages. ``targets`` (from
        :meth:`restore_targets`) are restored in place and then loaded for
        objects whose state holds distributed tensors.

        Example:
            >>> import numpy as np, cloudckpt
            >>> w = np.zeros(2); ckpt = Checkpoint(w=w, step=0)
            >>> ckpt.restore_state({"w": np.ones(2), "step": 4, "save_counter": 2})
            >>> w, ckpt.step, ckpt.save_counter
            (array([1., 1.]), 4, 2)
            >>> ckpt.restore_state({"w": np.ones(3), "step": 4})
            Traceback (most recent call last):
            ...
            ValueError: cannot restore the checkpoint: it does not match this Checkpoint (nothing was changed):
              'w': shape (2,) dtype float64 here, shape (3,) dtype float64 in the checkpoint
            Pass partial=True to restore only what matches.
        """
        if not isinstance(saved, dict):
            raise ValueError(f"checkpoint {source} does not hold a Checkpoint's state (a dict of names)")
        mm = _Mismatch()
        targets = targets or {}
        for name, obj in self._objects.items():
            if name not in saved:
                (mm.skipped if partial else mm.problems).append(f"{name!r}: missing from the checkpoint")
            elif not _has_state_dict(obj):
                _check(obj, saved[name], (name,), mm, partial)
            elif targets.get(name) is not None and targets[name] is not obj:
                _check(targets[name], saved[name], (name,), mm, partial)
        for name in saved:
            if name not in self._objects and name not in _RESERVED:
                (mm.skipped if partial else mm.problems).append(f"{name!r}: in the checkpoint but not in this Checkpoint")
        if mm.problems:
            listing = "\n  ".join(mm.problems)
            hint = (
                "Shapes, dtypes and container types must match even with partial=True."
                if partial
                else "Pass partial=True to restore only what matches."
            )
            raise ValueError(
                f"cannot restore {source or 'the checkpoint'}: it does not match this Checkpoint "
                f"(nothing was changed):\n  {listing}\n{hint}"
            )
        if mm.skipped:
            log.warning("partial restore of %s left out: %s", source, "; ".join(mm.skipped))
        for name, obj in list(self._objects.items()):
            if name not in saved:
                continue
            target = targets.get(name)
            if _has_state_dict(obj) and target is not None and target is not obj:
                obj.load_state_dict(_apply(target, saved[name], partial))  # in place into its own state dict
            elif _has_state_dict(obj):
                obj.load_state_dict(adapters.state_for(obj, saved[name]))
            else:
                self._objects[name] = _apply(obj, saved[name], partial)
        if "save_counter" in saved:
            object.__setattr__(self, "save_counter", int(saved["save_counter"]))

    def write(
        self,
        path: str,
        *,
        storage_options: dict[str, Any] | None = None,
        options: StoreOptions | None = None,
        process_group: Any = None,
    ) -> str:
        """Write one checkpoint at ``path`` (not managed, ``save_counter`` unchanged); return its URL.

        In a distributed job (torch.distributed initialized, or
        ``process_group``) every rank calls it; they commit one checkpoint.

        Example:
            >>> import numpy as np
            >>> Checkpoint(w=np.ones(1)).write("memory://doc-write/c")
            'memory://doc-write/c'
        """
        group = resolve_group(process_group)
        storage = open_storage(path, storage_options)
        state = self.state()
        flat = flatten(state, adapt=adapters.to_numpy)
        return write_checkpoint(storage, state, options=options, flat=flat, group=group).url

    def read(
        self,
        path: str,
        *,
        storage_options: dict[str, Any] | None = None,
        partial: bool = False,
        process_group: Any = None,
    ) -> None:
        """Restore from the checkpoint at ``path`` (in place; strict unless ``partial``).

        Distributed tensors (``DTensor``) are restored by reading only this
        rank's shard, whatever sharding and world size saved the checkpoint.
        In a distributed job every rank calls it, and if any rank cannot read
        its part, every rank raises before anything is restored.

        Example:
            >>> import numpy as np
            >>> w = np.ones(2); url = Checkpoint(w=w).write("memory://doc-read/c")
            >>> w2 = np.zeros(2); Checkpoint(w=w2).read(url); w2
            array([1., 1.])
        """
        group = resolve_group(process_group)
        storage = open_storage(path, storage_options)
        self.restore_from(storage, group, partial=partial)

    def restore_from(self, storage: Any, group: Any, *, partial: bool = False) -> None:
        """Read the checkpoint at ``storage`` (a :class:`~cloudckpt.storage.Storage`) and
        restore it on every rank of ``group`` (see :meth:`read`).

        Example:
            >>> from cloudckpt.storage import open_storage
            >>> from cloudckpt.distributed.group import SINGLE
            >>> w = np.ones(2); url = Checkpoint(w=w).write("memory://doc-restore-from/c")
            >>> w2 = np.zeros(2); Checkpoint(w=w2).restore_from(open_storage(url), SINGLE); w2
            array([1., 1.])
        """
        error: BaseException | None = None
        state: Any = None
        targets: dict[str, Any] = {}
        try:
            manifest = read_manifest(storage)
            targets = self.restore_targets()
            state = read_state(storage, manifest, regions=regions_of(targets), rank=group.rank)
        except Exception as exc:
            if group.size == 1:
                raise
            error = exc
        agree(group, error)
        self.restore_state(state, partial=partial, source=storage.url, targets=targets)
