"""A training loop that saves at every step (run as a subprocess by tests/test_crash.py).

    python crash_child.py DIRECTORY [--options JSON] [--saves N] [--arm-at STEP]
                          [--async-save] [--delay SECONDS]

Restores (or initializes), then for each step fills the deterministic state
of that step (tests/scripts/crashlib.py) and saves it with a
CheckpointManager (max_to_keep=2). Prints ``start <step> <restored url>``
once and ``committed <step>`` after every save that returned (with
``--async-save``: after ``sync()``). Before the save of step ``--arm-at`` it
calls ``cloudckpt.testing.faults.install_from_env()``: faults described by
``$CLOUDCKPT_FAULTS`` (e.g. ``kill_after=7``) count from that save on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import crashlib

import cloudckpt
from cloudckpt.testing import faults


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("directory")
    p.add_argument("--options", default="{}")
    p.add_argument("--saves", type=int, default=3)
    p.add_argument("--arm-at", type=int, default=None)
    p.add_argument("--async-save", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    a = p.parse_args(argv)

    ckpt, live = crashlib.new_checkpoint()
    manager = cloudckpt.CheckpointManager(
        ckpt,
        a.directory,
        max_to_keep=2,
        storage_options=json.loads(a.options) or None,
        options=crashlib.STORE_OPTIONS,
        async_save=a.async_save,
    )
    restored = manager.restore_or_initialize()
    start = int(ckpt.step)
    if restored is not None:
        assert crashlib.bit_exact({"model": live["model"], "optimizer": live["optimizer"]}, start), restored
    print(f"start {start} {restored}", flush=True)
    for step in range(start + 1, start + 1 + a.saves):
        if a.arm_at is not None and step == a.arm_at:
            faults.install_from_env()
        crashlib.fill(live, step)
        ckpt.step = step
        manager.save()
        if a.async_save:
            manager.sync()
        print(f"committed {step}", flush=True)
        if a.delay:
            time.sleep(a.delay)
    print("done", flush=True)


if __name__ == "__main__":
    main()
