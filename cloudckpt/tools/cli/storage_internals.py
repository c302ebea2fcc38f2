"""The one place the command reaches into the storage layer's private parts.

Three questions the storage verbs do not answer yet: which credentials a
set of options holds and how to mask them in text (``_secrets_of``,
``_redact_text``, ``BARE_MIN``), which option names a backend takes where it
would silently ignore others, and whether the bucket of a URL exists (both
asked of the fsspec filesystem behind a storage). Everything else of the
command uses only the public storage API, so that switching these to public
ones (``cloudckpt.storage.redact``, ``Storage.accepted_options()``,
``Storage.backend_name``, ``Storage.missing_bucket()``) touches this module
alone.

Example:
    >>> from cloudckpt.storage import open_storage
    >>> sorted(accepted_options(open_storage("/tmp")))[:2]
    ['auto_mkdir', 'listings_expiry_time']
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from typing import Any

from cloudckpt.storage import BARE_MIN, _redact_text, _secrets_of

__all__ = ["secrets_of", "redact_text", "accepted_options", "backend_name", "missing_bucket"]

log = logging.getLogger("cloudckpt")

# options every fsspec filesystem takes (its instance cache and listings cache)
_GENERIC_OPTIONS = frozenset({"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths"})
# what fsspec's local filesystem takes: a local path accepts (and ignores) these
_LOCAL_OPTIONS = _GENERIC_OPTIONS | {"auto_mkdir"}
# backends whose filesystem silently ignores an option it does not know (s3fs
# passes one on to aiobotocore, which rejects it at the first request)
_SILENT_BACKENDS = ("memory", "gs", "gcs")


def secrets_of(options: dict[str, Any] | None) -> list[str]:
    """The credential values of ``options`` and of the credential environment variables.

    Example:
        >>> "abc-123-xyz" in secrets_of({"secret": "abc-123-xyz", "anon": True})
        True
    """
    return _secrets_of(options)


def redact_text(text: str, secrets: Iterable[str], *, command_output: bool = True) -> str:
    """``text`` with credentials masked: ``secrets`` as whole tokens from
    8 characters on in the command's own output, from the storage layer's
    lower bound in a backend's own text (``command_output=False``).

    Example:
        >>> redact_text("secret=abc; key hunter2-hunter2", ["hunter2-hunter2"])
        'secret=***; key ***'
    """
    if command_output:
        return _redact_text(text, sorted(secrets), bare_min=BARE_MIN)
    return _redact_text(text, sorted(secrets))


def _filesystem(storage: Any) -> Any:
    """The fsspec filesystem behind ``storage`` (None on local disk)."""
    return getattr(getattr(storage._s, "backend", None), "fs", None)


def backend_name(storage: Any) -> str:
    """How an error names the backend of ``storage``: ``a local path`` or ``memory:// (MemoryFileSystem)``.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> backend_name(open_storage("memory://doc-backend-name"))
        'memory:// (MemoryFileSystem)'
    """
    if storage.is_local:
        return "a local path"
    return f"{storage.protocol}:// ({type(_filesystem(storage)).__name__})"


def accepted_options(storage: Any) -> frozenset[str] | None:
    """The option names the backend of ``storage`` takes, where it would
    silently ignore others; None where the backend reports them itself.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> "auto_mkdir" in accepted_options(open_storage("/tmp"))
        True
    """
    if storage.is_local:
        return _LOCAL_OPTIONS
    if storage.protocol not in _SILENT_BACKENDS:
        return None
    fs = _filesystem(storage)
    if fs is None:
        return None
    names = set(_GENERIC_OPTIONS)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for klass in type(fs).__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # pragma: no cover - a builtin __init__
            continue
        names.update(p.name for p in params if p.kind in kinds and p.name != "self")
    return frozenset(names)


def missing_bucket(storages: Iterable[Any]) -> str | None:
    """When a command found nothing: name the bucket of one of ``storages``
    that does not exist (one request per object-store URL; None if all exist
    or the backend does not say).

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> missing_bucket([open_storage("memory://doc-missing-bucket")]) is None
        True
    """
    for storage in storages:
        fs = _filesystem(storage)
        if fs is None or storage.protocol not in ("s3", "s3a", "gs", "gcs"):
            continue
        bucket = storage.url.split("://", 1)[1].split("/", 1)[0]
        try:
            fs.info(bucket)
        except FileNotFoundError:
            endpoint = "AWS_ENDPOINT_URL" if storage.protocol.startswith("s3") else "STORAGE_EMULATOR_HOST"
            return (
                f"no such bucket: '{bucket}' does not exist, so there is nothing at {storage.url}; "
                f"check the bucket name and the endpoint ({endpoint} or -o endpoint_url=...)"
            )
        except Exception as exc:  # permission denied, unreachable, ...: the original message stands
            log.debug("bucket probe of %s: %s", bucket, type(exc).__name__)
    return None
