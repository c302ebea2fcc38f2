"""Exit statuses: every failure becomes one line on stderr (credentials masked) and a documented status.

Example:
    >>> from cloudckpt.errors import CheckpointNotFoundError
    >>> classify(CheckpointNotFoundError("no checkpoint at /x"))
    (3, 'no checkpoint at /x')
    >>> classify(ValueError("bad"))[0] == EXIT["usage"]
    True
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from cloudckpt.errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    FormatVersionError,
    ObjectNotFoundError,
    OwnershipLostError,
    StorageError,
)
from cloudckpt.tools.admin import RefusedError
from cloudckpt.tools.cli.storage_options import given_option, opened, opened_storage, redact, redact_backend_text
from cloudckpt.tools.cli.storage_questions import missing_bucket

__all__ = ["EXIT", "classify", "fail", "guard"]

log = logging.getLogger("cloudckpt")

#: exit statuses, documented in the epilog of ``cloudckpt --help`` and docs/cli.md
EXIT = {
    "ok": 0,
    "damaged": 1,
    "usage": 2,
    "not_found": 3,
    "storage": 4,
    "refused": 5,
}

_UNEXPECTED_KWARG = re.compile(r"unexpected keyword argument '([^']+)'")

F = TypeVar("F", bound=Callable[..., Any])


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not x for x in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _rejected_option(exc: BaseException) -> str | None:
    """The option the user gave that the backend rejected (s3fs hands unknown
    options to aiobotocore, whose TypeError comes with the first request)."""
    for e in _chain(exc):
        if isinstance(e, (TypeError, StorageError)):
            m = _UNEXPECTED_KWARG.search(str(e))
            if m and given_option(m.group(1)):
                return m.group(1)
    return None


def _rejected_message(exc: BaseException, rejected: str) -> str:
    where = opened_storage(str(getattr(exc, "url", None) or ""))
    name = f"{where.url} ({where.protocol} backend)" if where is not None else "the URL"
    return (
        f"unknown storage option '{rejected}' for {name}: the backend rejected it at the first request "
        f"(got an unexpected keyword argument '{rejected}'); check the spelling or drop it "
        "(storage options: `cloudckpt --help`)"
    )


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message for ``exc`` (not yet redacted)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    rejected = _rejected_option(exc)
    if rejected is not None:
        return EXIT["usage"], _rejected_message(exc, rejected)
    if isinstance(exc, CorruptCheckpointError):
        return EXIT["damaged"], str(exc)
    if isinstance(exc, (CheckpointNotFoundError, ObjectNotFoundError)):
        return EXIT["not_found"], missing_bucket(opened()) or str(exc)
    if isinstance(exc, (CheckpointExistsError, OwnershipLostError, FormatVersionError, RefusedError)):
        return EXIT["refused"], str(exc)
    if isinstance(exc, StorageError):
        return EXIT["storage"], str(exc)
    if isinstance(exc, CheckpointError):
        return EXIT["damaged"], str(exc)
    if isinstance(exc, (NotADirectoryError, ValueError, TypeError)):
        return EXIT["usage"], str(exc)
    if isinstance(exc, ImportError):
        return EXIT["storage"], str(exc)
    # not from the storage layer, which redacts what it quotes: a backend's own text
    text = redact_backend_text(str(exc))
    if isinstance(exc, OSError):
        return EXIT["storage"], f"{type(exc).__name__}: {text}"
    return EXIT["storage"], f"unexpected {type(exc).__name__}: {text}"


def fail(code: int, message: str) -> NoReturn:
    """Print ``cloudckpt: error: <message>`` (credentials masked) on stderr and exit with ``code``."""
    click.echo(f"cloudckpt: error: {redact(message)}", err=True)
    sys.exit(code)


def guard(fn: F) -> F:
    """Turn exceptions into a one-line message (credentials redacted) and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as exc:
            code, message = classify(exc)
            log.debug("command failed: %s", type(exc).__name__)
            fail(code, message)

    return wrapper  # type: ignore[return-value]
