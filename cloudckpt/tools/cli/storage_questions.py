"""The storage layer's answers, worded for the command's messages.

How to mask credentials in the command's own output and in a backend's text
(:func:`cloudckpt.storage.redact.redact_text`, two lower bounds), how to
name a backend (:attr:`Storage.backend_name`) and which bucket of the URLs a
command opened does not exist (:meth:`Storage.missing_bucket`). The
questions themselves are the storage layer's public API; the command asks
:func:`cloudckpt.storage.redact.secrets_of` and
:meth:`Storage.accepted_options` directly.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> backend_name(open_storage("memory://doc-questions"))
    'memory:// (MemoryFileSystem)'
"""

from __future__ import annotations

from collections.abc import Iterable

from cloudckpt.storage import Storage
from cloudckpt.storage.redact import BARE_MIN
from cloudckpt.storage.redact import redact_text as _mask

__all__ = ["redact_text", "backend_name", "missing_bucket"]


def redact_text(text: str, secrets: Iterable[str], *, command_output: bool = True) -> str:
    """``text`` with credentials masked: ``secrets`` as whole tokens from
    8 characters on in the command's own output, from the storage layer's
    lower bound in a backend's own text (``command_output=False``).

    Example:
        >>> redact_text("secret=abc; key hunter2-hunter2", ["hunter2-hunter2"])
        'secret=***; key ***'
    """
    if command_output:
        return _mask(text, sorted(secrets), bare_min=BARE_MIN)
    return _mask(text, sorted(secrets))


def backend_name(storage: Storage) -> str:
    """How an error names the backend of ``storage``: ``a local path`` or ``memory:// (MemoryFileSystem)``.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> backend_name(open_storage("memory://doc-backend-name"))
        'memory:// (MemoryFileSystem)'
    """
    if storage.is_local:
        return "a local path"
    return f"{storage.protocol}:// ({storage.backend_name})"


def missing_bucket(storages: Iterable[Storage]) -> str | None:
    """When a command found nothing: name the bucket of one of ``storages``
    that does not exist (one request per object-store URL; None if all exist
    or the backend does not say).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> missing_bucket([open_storage("memory://doc-missing-bucket")]) is None
        True
    """
    for storage in storages:
        bucket = storage.missing_bucket()
        if bucket is not None and storage.protocol in ("az", "abfs", "abfss"):
            return (
                f"no such container: '{bucket}' does not exist, so there is nothing at {storage.url}; "
                "check the container name and the account (AZURE_STORAGE_CONNECTION_STRING or -o connection_string=...)"
            )
        if bucket is not None:
            endpoint = "AWS_ENDPOINT_URL" if storage.protocol.startswith("s3") else "STORAGE_EMULATOR_HOST"
            return (
                f"no such bucket: '{bucket}' does not exist, so there is nothing at {storage.url}; "
                f"check the bucket name and the endpoint ({endpoint} or -o endpoint_url=...)"
            )
    return None
