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

__all__ = ["main", "run", "initial_state", "train_step"]

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
    # the public cloudckpt.Checkpoint / cloudckpt.CheckpointManager, imported from their modules
    # (the demo is part of the package: it does not import the package's root)
    from cloudckpt.checkpoint import Checkpoint
    from cloudckpt.manager.checkpoint_manager import CheckpointManager

    state = initial_state()
    ckpt = Checkpoint(model=state, step=0)
    manager = CheckpointManager(ckpt, directory, max_to_keep=3, checkpoint_name="ckpt")
    restored = manager.restore_or_initialize()
    start = int(ckpt.step)
    print(f"[worker {os.getpid()}] {'resumed from ' + restored if restored else 'fresh start'} at step {start}", flush=True)
    for step in range(start, steps):
        loss = train_step(state, step)
        ckpt.step = step + 1
        if (step + 1) % every == 0:
            url = manager.save(checkpoint_number=step + 1) or ""
            kept = ", ".join(f"ckpt-{n}" for n in manager.all_steps())
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


#: defaults of the demo's options (``cloudckpt demo`` and ``python -m cloudckpt.demo``)
DEFAULT_STEPS = 60
DEFAULT_EVERY = 5
DEFAULT_KILL_AT = 33
DEFAULT_DELAY = 0.02

HELP = {
    "dir": "checkpoint directory: a local path or any URL (s3://bucket/run, ...); default: a new temporary directory",
    "steps": "training steps of the whole run",
    "every": "save a checkpoint every N steps",
    "kill_at": "kill the first training process (SIGKILL, as a preempted machine) after this step",
    "delay": "seconds per training step, so that the kill lands mid-run",
}


def main(argv: list[str] | None = None) -> int:
    """Run the demo with command-line arguments (``python -m cloudckpt.demo --help``);
    returns the process exit status.

    Example:
        >>> main(["--steps", "0"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    p = argparse.ArgumentParser(
        prog="python -m cloudckpt.demo", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--dir", default=None, metavar="URL", help=HELP["dir"])
    p.add_argument("--steps", type=_positive, default=DEFAULT_STEPS, help=f"{HELP['steps']} (default {DEFAULT_STEPS})")
    p.add_argument("--every", type=_positive, default=DEFAULT_EVERY, help=f"{HELP['every']} (default {DEFAULT_EVERY})")
    p.add_argument(
        "--kill-at", type=int, default=DEFAULT_KILL_AT, metavar="STEP", help=f"{HELP['kill_at']} (default {DEFAULT_KILL_AT})"
    )
    p.add_argument(
        "--delay", type=float, default=DEFAULT_DELAY, metavar="SECONDS", help=f"{HELP['delay']} (default {DEFAULT_DELAY})"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.WARNING)
        return _worker(args.dir, args.steps, args.every, args.delay)
    return run(args.dir, steps=args.steps, every=args.every, kill_at=args.kill_at, delay=args.delay)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def run(
    directory: str | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    every: int = DEFAULT_EVERY,
    kill_at: int | None = DEFAULT_KILL_AT,
    delay: float = DEFAULT_DELAY,
) -> int:
    """Train, kill with SIGKILL after step ``kill_at``, resume in a new process
    and compare with an uninterrupted run; returns 0 if bit-identical, else 1.
    Prints what happens. ``directory`` defaults to a new temporary directory.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     status = run(steps=4, every=2, kill_at=None, delay=0.0)
        >>> status, "bit for bit: True" in out.getvalue()
        (0, True)
    """
    from cloudckpt.__about__ import __version__
    from cloudckpt.api import load
    from cloudckpt.manager.checkpoint_manager import latest_checkpoint

    directory = directory or os.path.join(tempfile.mkdtemp(prefix="cloudckpt-demo-"), "run")
    print(f"cloudckpt {__version__} demo — checkpoints in {directory}\n", flush=True)
    print("1. training, saving every", every, "steps, max_to_keep=3; killed at step", kill_at, flush=True)
    _run_worker(directory, steps, every, delay, kill_at)
    latest = latest_checkpoint(directory)
    print(f"\n2. after the kill: latest committed checkpoint is {latest}")
    print("\n3. a new process resumes from it", flush=True)
    status = _run_worker(directory, steps, every, 0.0, None)
    if status != 0:
        print(f"resumed run failed with status {status}")
        return 1
    reference = initial_state()
    for step in range(steps):
        train_step(reference, step)
    final: Any = load(latest_checkpoint(directory) or "", keys=["model"])["model"]
    same = all(np.array_equal(final[k], reference[k]) for k in reference)
    print(f"\n4. resumed run equals an uninterrupted run, bit for bit: {same}")
    print(f"   checkpoints left: {[u.rsplit('/', 1)[-1] for u in _committed(directory)]}")
    return 0 if same else 1


def _committed(directory: str) -> list[str]:
    from cloudckpt.layout.catalog import scan
    from cloudckpt.storage import open_storage

    storage = open_storage(directory)
    return [storage.url_for(e.name) for e in scan(storage) if e.status == "committed"]


if __name__ == "__main__":
    sys.exit(main())
