"""A manager that saves a constant pattern until it loses the directory (tests/test_concurrency.py).

    python concurrent_writer.py DIRECTORY VALUE [--options JSON] [--seconds S] [--go FILE]

Every array of its state is filled with VALUE (and ``tag`` is VALUE), so a
checkpoint that mixed the data of two writers would show two values.
Restores first (claiming the directory), waits until the file ``--go``
exists if given, then saves for ``--seconds`` seconds. Prints ``saved
<url>`` per save, ``lost`` and stops on OwnershipLostError, ``error <type>
<message>`` on any other error, ``done`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import crashlib

import cloudckpt


def pattern_state(value: float) -> dict:
    """Arrays that are all ``value``: one chunked (with crashlib.STORE_OPTIONS), two packed."""
    return {
        "w": np.full((32, 16), value, dtype="<f4"),
        "b": np.full(16, value, dtype="<f8"),
        "n": np.full(4, int(value), dtype="<i8"),
    }


def pattern_of(state: dict) -> set[float]:
    """The set of values a loaded state holds (one element if it is not mixed)."""
    values: set[float] = {float(state["tag"])}
    for a in state["model"].values():
        values |= {float(x) for x in np.unique(a)}
    return values


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("directory")
    p.add_argument("value", type=float)
    p.add_argument("--options", default="{}")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--go")
    a = p.parse_args(argv)

    live = pattern_state(a.value)
    ckpt = cloudckpt.Checkpoint(model=live, tag=a.value)
    manager = cloudckpt.CheckpointManager(
        ckpt, a.directory, 3, storage_options=json.loads(a.options) or None, options=crashlib.STORE_OPTIONS
    )
    manager.restore_or_initialize()
    print(f"claimed {manager.epoch}", flush=True)
    if a.go:
        while not os.path.exists(a.go):
            time.sleep(0.005)
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        for arr in live.values():  # the restore may have brought the other writer's values
            arr[...] = a.value
        ckpt.tag = a.value
        try:
            url = manager.save()
        except cloudckpt.OwnershipLostError:
            print("lost", flush=True)
            return
        except cloudckpt.CheckpointError as exc:
            print(f"error {type(exc).__name__} {exc}", flush=True)
            sys.exit(1)
        print(f"saved {url}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
