"""Deterministic training state shared by the reliability child scripts and tests.

The state of step ``s`` depends only on ``s``: a checkpoint numbered ``n``
(saved at step ``n``) must restore to exactly ``make_state(n)``. Two arrays
are large enough to be stored chunked (``STORE_OPTIONS``), the others are
packed, so both paths of the tensor store are exercised. One of the chunked
arrays (``model/frozen``, a frozen base) is the same at every step: a
manager's incremental saves (the default) copy its chunks from the previous
checkpoint, so every crash and fault test exercises those copies too.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

import cloudckpt
from cloudckpt.storage import open_storage

# w and frozen (32x16 float32 = 2048 B each) are chunked into 2 objects of 1024 B; the rest is packed.
STORE_OPTIONS = cloudckpt.StoreOptions(pack_threshold=1024, chunk_bytes=1024)


FROZEN = np.random.default_rng(7).standard_normal((32, 16)).astype("<f4")  # the same at every step


def make_state(step: int) -> dict[str, Any]:
    """The arrays of step ``step``."""
    rng = np.random.default_rng(10_000 + step)
    return {
        "model": {
            "w": rng.standard_normal((32, 16)).astype("<f4"),
            "b": rng.standard_normal(16).astype("<f4"),
            "h": rng.standard_normal(10).astype("<f2"),
            "frozen": FROZEN.copy(),
        },
        "optimizer": {
            "m": rng.standard_normal((8, 16)).astype("<f4"),
            "count": np.full(3, step, dtype="<i8"),
        },
    }


def new_checkpoint() -> tuple[cloudckpt.Checkpoint, dict[str, Any]]:
    """A Checkpoint over live arrays (zeros) and a ``step`` scalar."""
    live = make_state(0)
    for part in live.values():
        for arr in part.values():
            arr[...] = 0
    ckpt = cloudckpt.Checkpoint(model=live["model"], optimizer=live["optimizer"], step=0)
    return ckpt, live


def fill(live: dict[str, Any], step: int) -> None:
    """Overwrite the live arrays with the state of ``step`` (in place)."""
    want = make_state(step)
    for part, arrays in want.items():
        for name, arr in arrays.items():
            live[part][name][...] = arr


def bit_exact(tree: dict[str, Any], step: int) -> bool:
    """Whether ``tree`` (``{"model": ..., "optimizer": ...}``) holds exactly the state of ``step``."""
    want = make_state(step)
    for part, arrays in want.items():
        got = tree.get(part)
        if not isinstance(got, dict) or set(got) != set(arrays):
            return False
        for name, arr in arrays.items():
            g = got[name]
            if not isinstance(g, np.ndarray) or g.dtype != arr.dtype or g.shape != arr.shape:
                return False
            if g.tobytes() != arr.tobytes():
                return False
    return True


def expected_objects(directory: str, storage_options: dict | None) -> tuple[set[str], dict[str, int]]:
    """(keys that may exist, every object that exists) of a directory of checkpoints.

    May exist: each committed checkpoint's manifest and the objects its
    manifest lists, preserved markers, the state file, ownership records.
    """
    s = open_storage(directory, storage_options)
    everything = s.list_all()
    allowed = {"checkpoint"}
    for key in everything:
        top = key.split("/", 1)[0]
        if top == "ownership" and key.count("/") == 1:
            allowed.add(key)
        elif key.endswith("/preserved.json") and key.count("/") == 1:
            allowed.add(key)
        elif key.endswith("/manifest.json") and key.count("/") == 1:
            try:
                m = json.loads(s.read(key))
            except Exception:
                continue  # a damaged manifest vouches for nothing
            allowed.add(key)
            for o in m.get("objects", []):
                allowed.add(f"{top}/{o['key']}")
    return allowed, everything


def orphans(directory: str, storage_options: dict | None) -> list[str]:
    """Objects in ``directory`` that belong to no committed checkpoint and are no record."""
    allowed, everything = expected_objects(directory, storage_options)
    return sorted(k for k in everything if k not in allowed)


# ------------------------------------------------------------------ forked children

#: Modules a forkserver imports once, so that each forked child starts in milliseconds.
PRELOAD = ["crashlib", "crash_child", "crash_verify", "concurrent_writer", "cloudckpt", "cloudckpt.testing.faults", "s3fs", "gcsfs"]


def run_script(module_name: str, argv: list[str], env: dict[str, str], out_path: str) -> None:
    """Body of a child process: ``python <module_name>.py argv...`` without a new interpreter.

    Sets ``env`` in ``os.environ``, sends stdout to ``out_path`` and stderr
    to ``out_path + ".err"`` (line-buffered), then runs the module's
    ``main(argv)``. Started by a forkserver that has imported PRELOAD.
    """
    import importlib
    import os
    import sys

    os.environ.update(env)
    for fd, path in ((1, out_path), (2, out_path + ".err")):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    importlib.import_module(module_name).main(argv)
    sys.stdout.flush()
