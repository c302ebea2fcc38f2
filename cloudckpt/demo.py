"""The demo: train a small numpy model under a CheckpointManager, kill it, resume.

``python -m cloudckpt.demo`` (or ``cloudckpt demo``) runs on local disk, no
cloud account needed:

1. a training process (linear regression, SGD with momentum) saves a
   checkpoint every few steps with ``max_to_keep=3`` — checkpoints are
   written and retired as it goes;
2. it is killed with SIGKILL mid-run, as a spot instance would be;
3. a fresh process calls ``restore_or_initialize()``, resumes from the
   latest committed checkpoint and finishes;
4. the result is compared with an uninterrupted run: bit-identical.

``--dir`` takes any URL (``s3://bucket/run`` with credentials in the
environment, a local path); the default is a fresh temporary directory.

Example:
    >>> state = initial_state()
    >>> sorted(state)
    ['momentum', 'w']
    >>> train_step(state, 0) > 0
    True
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

__all__ = ["main", "initial_state", "train_step"]

FEATURES = 8
SEED = 1234


def _true_weights() -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal(FEATURES)


def initial_state() -> dict[str, np.ndarray]:
    """Fresh model weights and optimizer state."""
    return {"w": np.zeros(FEATURES), "momentum": np.zeros(FEATURES)}


def train_step(state: dict[str, np.ndarray], step: int, lr: float = 0.05, beta: float = 0.9) -> float:
    """One SGD-with-momentum step on the batch of ``step`` (deterministic); returns the loss."""
    rng = np.random.default_rng(SEED + 1 + step)
    x = rng.standard_normal((64, FEATURES))
    y = x @ _true_weights() + 0.01 * rng.standard_normal(64)
    err = x @ state["w"] - y
    grad = x.T @ err / len(y)
    state["momentum"] *= beta
    state["momentum"] += grad
    state["w"] -= lr * state["momentum"]
    return float(np.mean(err**2))


def _worker(directory: str, steps: int, every: int, delay: float) -> int:
    import cloudckpt

    state = initial_state()
    ckpt = cloudckpt.Checkpoint(model=state, step=0)
    manager = cloudckpt.CheckpointManager(ckpt, directory, max_to_keep=3, checkpoint_name="ckpt")
    restored = manager.restore_or_initialize()
    start = int(ckpt.step)
    print(f"[worker {os.getpid()}] {'resumed from ' + restored if restored else 'fresh start'} at step {start}", flush=True)
    for step in range(start, steps):
        loss = train_step(state, step)
        ckpt.step = step + 1
        if (step + 1) % every == 0:
            url = manager.save(checkpoint_number=step + 1) or ""
            kept = ", ".join(u.rsplit("/", 1)[-1] for u in manager.checkpoints)
            print(f"step {step + 1:3d}  loss {loss:.5f}  saved {url.rsplit('/', 1)[-1]}  kept [{kept}]", flush=True)
        else:
            print(f"tick {step + 1}", flush=True)
        time.sleep(delay)
    print(f"[worker] done at step {steps}; final w[:3] = {np.round(state['w'][:3], 4)}", flush=True)
    return 0


def _run_worker(directory: str, steps: int, every: int, delay: float, kill_at: int | None) -> int:
    cmd = [
        sys.executable, "-m", "cloudckpt.demo", "--worker", "--dir", directory,
        "--steps", str(steps), "--every", str(every), "--delay", str(delay),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        words = line.split()
        if not line.startswith("tick"):
            print("   " + line.rstrip())
        if kill_at is not None and words[:1] in (["tick"], ["step"]) and int(words[1]) >= kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            print(f"   *** SIGKILL after step {words[1]}: the machine is gone, mid-training ***")
            break
    return proc.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit status."""
    p = argparse.ArgumentParser(prog="cloudckpt demo", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--dir", default=None, help="checkpoint directory URL (default: a new temporary directory)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=5, help="save every N steps")
    p.add_argument("--kill-at", type=int, default=33, help="kill the first run after this step")
    p.add_argument("--delay", type=float, default=0.02, help="seconds per step (to make the kill land mid-run)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.WARNING)
        return _worker(args.dir, args.steps, args.every, args.delay)

    import cloudckpt

    directory = args.dir or os.path.join(tempfile.mkdtemp(prefix="cloudckpt-demo-"), "run")
    print(f"cloudckpt {cloudckpt.__version__} demo — checkpoints in {directory}\n")
    print("1. training, saving every", args.every, "steps, max_to_keep=3; killed at step", args.kill_at)
    _run_worker(directory, args.steps, args.every, args.delay, args.kill_at)
    latest = cloudckpt.latest_checkpoint(directory)
    print(f"\n2. after the kill: latest committed checkpoint is {latest}")
    print("\n3. a new process resumes from it")
    status = _run_worker(directory, args.steps, args.every, 0.0, None)
    if status != 0:
        print(f"resumed run failed with status {status}")
        return 1
    reference = initial_state()
    for step in range(args.steps):
        train_step(reference, step)
    final: Any = cloudckpt.load(cloudckpt.latest_checkpoint(directory) or "", keys=["model"])["model"]
    same = all(np.array_equal(final[k], reference[k]) for k in reference)
    print(f"\n4. resumed run equals an uninterrupted run, bit for bit: {same}")
    print(f"   checkpoints left: {[u.rsplit('/', 1)[-1] for u in _committed(directory)]}")
    return 0 if same else 1


def _committed(directory: str) -> list[str]:
    from .catalog import scan
    from .storage import open_storage

    storage = open_storage(directory)
    return [storage.url_for(e.name) for e in scan(storage) if e.status == "committed"]


if __name__ == "__main__":
    sys.exit(main())
