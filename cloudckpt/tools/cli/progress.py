"""Progress of a long command on stderr: a tqdm bar on a terminal, plain lines otherwise, nothing with --quiet.

Example:
    >>> p = Progress("verify", 10, quiet=True)
    >>> p.advance(4); p(10); p.done
    10
    >>> p.close()
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from cloudckpt.tools.cli.output import human, plural
from cloudckpt.tools.cli.storage_options import redact

__all__ = ["Progress", "ticking"]


def _terminal_size() -> tuple[int, int]:
    """(columns, rows) of the terminal on stderr; 80x24 where it reports 0 (a pty
    created without a size), in which tqdm would otherwise draw nothing."""
    try:
        cols, rows = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        cols, rows = 0, 0
    return (cols if cols > 0 else 80), (rows if rows > 0 else 24)


def _eta(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class _PlainProgress:
    """Progress as plain lines on stderr (no terminal): at most one line per
    ``interval`` seconds, and always the last (100%)."""

    def __init__(self, label: str, unit: str = "B", interval: float = 2.0) -> None:
        self.label = label
        self.unit = unit
        self.t0 = time.monotonic()
        self.last = -1e9
        self.interval = interval

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total <= 0 or (0 < done < total and now - self.last < self.interval):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        pct = 100.0 * min(done, total) / total
        eta = "?" if done < total and rate <= 0 else _eta((total - done) / rate if done < total else 0.0)
        if self.unit == "B":
            line = f"{human(done)} of {human(total)} ({pct:.0f}%), {human(rate)}/s, ETA {eta}"
        else:
            line = f"{done} of {plural(total, self.unit)} ({pct:.0f}%), ETA {eta}"
        click.echo(f"{self.label}: {line}", err=True)


class Progress:
    """The progress of one long command on stderr: a tqdm bar (amount, rate,
    ETA) when stderr is a terminal, else plain lines (:class:`_PlainProgress`);
    nothing when ``quiet``. ``unit`` is ``"B"`` (bytes) or a noun counted
    (``"item"``). Safe to call from I/O threads.

    Example:
        >>> p = Progress("gc", 3, unit="item", quiet=True)
        >>> p.advance(); p.advance(2); p.done
        3
        >>> p.close()
    """

    def __init__(self, label: str, total: int | None = None, *, unit: str = "B", quiet: bool = False) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._quiet = quiet
        self._tty = not quiet and sys.stderr.isatty()
        self._plain = _PlainProgress(label, unit) if not quiet and not self._tty else None
        self._bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int | None = None) -> None:
        """Set the amount done (and the total): the callback ``cp`` hands to :func:`cloudckpt.copy`."""
        with self._lock:
            if total is not None:
                self.total = total
            self.done = done
            self._show()

    def advance(self, n: int = 1) -> None:
        """Add ``n`` to the amount done."""
        with self._lock:
            self.done += n
            self._show()

    def _show(self) -> None:
        if self._quiet or self.total is None:
            return
        if self._plain is not None:
            self._plain(self.done, self.total)
            return
        if self._bar is None:
            from tqdm import tqdm

            cols, rows = _terminal_size()
            in_bytes = self.unit == "B"
            self._bar = tqdm(
                total=self.total,
                unit="B" if in_bytes else f" {self.unit}",
                unit_scale=in_bytes,
                unit_divisor=1024,
                desc=self.label,
                file=sys.stderr,
                ncols=cols,
                nrows=rows,
            )
        if self._bar.total != self.total:
            self._bar.total = self.total
        self._bar.update(self.done - self._bar.n)

    def close(self) -> None:
        """Finish the bar (a no-op for plain lines)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


@contextlib.contextmanager
def ticking(label: str, what: str, *, quiet: bool = False, after: float = 1.0, interval: float = 2.0) -> Iterator[None]:
    """Show that a step which reports no progress of its own is still running:
    from ``after`` seconds on, its elapsed time (redrawn on a terminal, a
    plain line every ``interval`` seconds otherwise).

    Example:
        >>> with ticking("rm", "removing memory://x", quiet=True):
        ...     pass
    """
    if quiet:
        yield
        return
    stop = threading.Event()
    tty = sys.stderr.isatty()
    t0 = time.monotonic()
    text = redact(what)

    def run() -> None:
        if stop.wait(after):
            return
        bar: Any = None
        if tty:
            from tqdm import tqdm

            cols, rows = _terminal_size()
            bar = tqdm(
                desc=f"{label}: {text}", bar_format="{desc} [{elapsed}]", file=sys.stderr, ncols=cols, nrows=rows
            )
            bar.start_t -= time.monotonic() - t0  # the elapsed time of the step, not of the bar
        while True:
            if bar is not None:
                bar.refresh()
            else:
                click.echo(f"{label}: {text} ({time.monotonic() - t0:.0f} s so far)", err=True)
            if stop.wait(0.25 if tty else interval):
                break
        if bar is not None:
            bar.close()

    thread = threading.Thread(target=run, name="cloudckpt-ticking", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
