"""``cloudckpt demo``: the README's kill-and-resume demonstration (:mod:`cloudckpt.demo`) as a command.

Example:
    >>> from click.testing import CliRunner
    >>> "--kill-at" in CliRunner().invoke(demo_cmd, ["--help"]).output
    True
"""

from __future__ import annotations

import sys

import click

from cloudckpt import demo as _demo
from cloudckpt.tools.cli.exits import guard
from cloudckpt.tools.cli.flags import SEE_ALSO

__all__ = ["demo_cmd"]


def _help(option: str) -> str:
    text = _demo.HELP[option]
    return text[0].upper() + text[1:] + "."


@click.command("demo", epilog=SEE_ALSO)
@click.option(
    "--dir",
    "directory",
    default=None,
    metavar="URL",
    help=_help("dir"),
)
@click.option("--steps", type=click.IntRange(1), default=_demo.DEFAULT_STEPS, show_default=True, help=_help("steps"))
@click.option("--every", type=click.IntRange(1), default=_demo.DEFAULT_EVERY, show_default=True, help=_help("every"))
@click.option(
    "--kill-at", default=_demo.DEFAULT_KILL_AT, show_default=True, metavar="STEP", type=int, help=_help("kill_at")
)
@click.option(
    "--delay",
    type=click.FloatRange(0.0),
    default=_demo.DEFAULT_DELAY,
    show_default=True,
    metavar="SECONDS",
    help=_help("delay"),
)
@guard
def demo_cmd(directory: str | None, steps: int, every: int, kill_at: int, delay: float) -> None:
    """Train a small model under a CheckpointManager, kill it mid-run, resume in
    a new process, and check that the result equals an uninterrupted run
    bit for bit: the README's main job, on local disk, no cloud account needed.

    Exits 0 when the resumed run equals the uninterrupted one, 1 otherwise.
    """
    status = _demo.run(directory, steps=steps, every=every, kill_at=kill_at, delay=delay)
    sys.exit(int(status or 0))
