"""Training script of tests/test_preemption.py (run as a subprocess).

A tiny numpy model (linear regression, SGD with momentum) trained with a
CheckpointManager (every ``--every`` steps) and a PreemptionCheckpointHandler
called once per step. Deterministic: the batch of step ``s`` depends only on
``s``, so a run that is preempted and resumed ends with exactly the weights of
an uninterrupted one (``train(steps)``).

    python preempt_train.py DIRECTORY [--steps N] [--options JSON] [--async-save] [--out W.npy]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

TRUE_W = np.array([1.0, -2.0, 0.5, 3.0])


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(16, 4))
    return x, x @ TRUE_W + 0.1


def train_step(w: np.ndarray, m: np.ndarray, step: int) -> None:
    """One SGD-with-momentum step, in place."""
    x, y = batch(step)
    grad = 2.0 * x.T @ (x @ w - y) / len(y)
    m *= 0.9
    m += grad
    w -= 0.01 * m


def train(steps: int) -> np.ndarray:
    """The uninterrupted reference run."""
    w, m = np.zeros(4), np.zeros(4)
    for s in range(steps):
        train_step(w, m, s)
    return w


def main() -> None:
    import cloudckpt

    p = argparse.ArgumentParser()
    p.add_argument("directory")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--delay", type=float, default=0.02)
    p.add_argument("--options", default="{}")
    p.add_argument("--async-save", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()

    w, m, step = np.zeros(4), np.zeros(4), np.array(0, dtype=np.int64)
    ckpt = cloudckpt.Checkpoint(model={"w": w}, optimizer={"m": m}, step=step)
    manager = cloudckpt.CheckpointManager(
        ckpt,
        a.directory,
        max_to_keep=3,
        step_counter=step,
        checkpoint_interval=a.every,
        async_save=a.async_save,
        storage_options=json.loads(a.options) or None,
    )
    handler = cloudckpt.PreemptionCheckpointHandler(manager, grace_period=20.0)
    restored = manager.restore_or_initialize()
    print(f"start step={int(step)} restored={restored}", flush=True)
    try:
        while step < a.steps:
            train_step(w, m, int(step))
            step += 1
            handler.check()  # after the update: the state is consistent
            manager.save()  # every `every` steps
            print(f"step {int(step)}", flush=True)
            time.sleep(a.delay)
        manager.save(check_interval=False)
        manager.sync()
        if a.out:
            np.save(a.out, w)
        print("done", flush=True)
    finally:  # runs on the handler's SystemExit too
        print(f"exiting at step {int(step)}", flush=True)


if __name__ == "__main__":
    main()
