"""What a command prints: sizes and counts for people, tables, JSON; credentials always masked.

Example:
    >>> human(1536), plural(2, "checkpoint")
    ('1.5 KiB', '2 checkpoints')
    >>> print(table([["a", "1"]], ["NAME", "SIZE"]))
    NAME  SIZE
    a     1
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from cloudckpt.tools.cli.storage_options import redact

__all__ = ["human", "plural", "utc_time", "table", "echo_json", "out", "err"]


def human(n: int | float | None) -> str:
    """Bytes for people.

    Example:
        >>> human(0), human(1536), human(3 * 2**30)
        ('0 B', '1.5 KiB', '3.0 GiB')
    """
    if n is None:
        return "-"
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{int(x)} B" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} PiB"  # pragma: no cover


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and the word, singular or plural.

    Example:
        >>> plural(1, "object"), plural(0, "object"), plural(2, "checkpoint"), plural(3, "entry", "entries")
        ('1 object', '0 objects', '2 checkpoints', '3 entries')
    """
    return f"{n} {word if n == 1 else (words or word + 's')}"


def utc_time(ts: float | None) -> str:
    """A POSIX time as ``YYYY-MM-DD HH:MM:SS`` in UTC (``-`` for None).

    Example:
        >>> utc_time(0), utc_time(None)
        ('1970-01-01 00:00:00', '-')
    """
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """``rows`` under ``header`` in aligned columns.

    Example:
        >>> print(table([["ckpt-1", "3 KiB"]], ["NAME", "SIZE"]))
        NAME    SIZE
        ckpt-1  3 KiB
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout, credentials masked.

    Example:
        >>> echo_json({"a": 1})
        {
          "a": 1
        }
    """
    click.echo(redact(json.dumps(data, indent=2, sort_keys=False, default=str)))


def out(text: str) -> None:
    """Print ``text`` on stdout, credentials masked.

    Example:
        >>> out("secret=abc")
        secret=***
    """
    click.echo(redact(text))


def err(text: str) -> None:
    """Print ``text`` on stderr, credentials masked."""
    click.echo(redact(text), err=True)
