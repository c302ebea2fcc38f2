"""What the command asks of the storage layer beyond its verbs, in one place.

Which credentials a set of options holds and how to mask them in text
(:mod:`cloudckpt.storage.redact`), which option names a backend takes where
it would silently ignore others (:meth:`Storage.accepted_options`), how to
name a backend in a message (:attr:`Storage.backend_name`) and whether the
bucket of a URL exists (:meth:`Storage.missing_bucket`): each a public
question of the storage layer, worded here for the command's messages.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> sorted(accepted_options(open_storage("/tmp")))[:2]
    ['auto_mkdir', 'listings_expiry_time']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cloudckpt.storage import Storage
from cloudckpt.storage.redact import BARE_MIN
from cloudckpt.storage.redact import redact_text as _mask
from cloudckpt.storage.redact import secrets_of as _credentials

__all__ = ["secrets_of", "redact_text", "accepted_options", "backend_name", "missing_bucket"]

def secrets_of(options: dict[str, Any] | None) -> list[str]:
    """The credential values of ``options`` and of the credential environment variables.

    Example:
        >>> "abc-123-xyz" in secrets_of({"secret": "abc-123-xyz", "anon": True})
        True
    """
    return _credentials(options)


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


def accepted_options(storage: Storage) -> frozenset[str] | None:
    """The option names the backend of ``storage`` takes, where it would
    silently ignore others; None where the backend reports them itself.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> "auto_mkdir" in accepted_options(open_storage("/tmp"))
        True
    """
    return storage.accepted_options()


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
        if bucket is not None:
            endpoint = "AWS_ENDPOINT_URL" if storage.protocol.startswith("s3") else "STORAGE_EMULATOR_HOST"
            return (
                f"no such bucket: '{bucket}' does not exist, so there is nothing at {storage.url}; "
                f"check the bucket name and the endpoint ({endpoint} or -o endpoint_url=...)"
            )
    return None
