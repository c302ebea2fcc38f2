"""Helpers of the reliability tests (test_crash, test_concurrency, ...): not a test module.

Child processes are forked from a forkserver that has imported cloudckpt,
s3fs, gcsfs and the child scripts of tests/scripts once, so that each child
— a real process, killed by a real signal — starts in milliseconds.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import types
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
import crashlib  # noqa: E402

PARALLEL = int(os.environ.get("CLOUDCKPT_CRASH_PARALLEL", "4"))


def record(scenario: str, **facts) -> None:
    """Append what ran to $CLOUDCKPT_RELIABILITY_LOG (for docs/reliability.md)."""
    path = os.environ.get("CLOUDCKPT_RELIABILITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"scenario": scenario, **facts}) + "\n")


_CTX: list = []


def forkserver():
    """A multiprocessing context whose server has imported cloudckpt, s3fs, gcsfs and the
    child scripts: each child is a real process (forked from it, killed by a real
    SIGKILL) that starts in milliseconds instead of seconds of imports."""
    if not _CTX:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(crashlib.PRELOAD)
        _CTX.append(ctx)
    return _CTX[0]


class Child:
    """One child process running ``<module>.main(argv)`` with extra environment ``env``."""

    counter = 0

    def __init__(self, module: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        Child.counter += 1
        self.out = workdir / f"child-{os.getpid()}-{Child.counter}.out"
        self.proc = forkserver().Process(target=crashlib.run_script, args=(module, argv, env, str(self.out)))
        # Without a __main__ to re-import, the child skips multiprocessing's "main module
        # fix-up" (which would import pytest in every child: a second of CPU each).
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            self.proc.start()
        finally:
            sys.modules["__main__"] = main

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def stderr(self) -> str:
        err = Path(str(self.out) + ".err")
        return err.read_text() if err.exists() else ""

    def wait(self, timeout: float) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()
            raise AssertionError(f"child still running after {timeout} s: {self.lines()} {self.stderr()}")
        return self.proc.exitcode


def run_all(module: str, jobs: list[tuple[list[str], dict[str, str]]], workdir: Path, timeout: float = 180) -> list[tuple[int, str, str]]:
    """Run ``(argv, extra env)`` jobs, at most PARALLEL at once; ``[(exit code, stdout, stderr)]`` in order."""
    results: dict[int, tuple[int, str, str]] = {}
    pending = list(enumerate(jobs))
    running: dict[int, Child] = {}
    deadline = time.monotonic() + timeout
    while pending or running:
        while pending and len(running) < PARALLEL:
            i, (argv, env) = pending.pop(0)
            running[i] = Child(module, argv, env, workdir)
        for i, c in list(running.items()):
            if not c.proc.is_alive():
                code = c.wait(1)
                results[i] = (code, "\n".join(c.lines()), c.stderr())
                del running[i]
        if time.monotonic() > deadline:
            for c in running.values():
                c.proc.kill()
            raise AssertionError(f"children still running after {timeout} s")
        time.sleep(0.01)
    return [results[i] for i in range(len(jobs))]


