"""The exceptions cloudckpt raises.

Every error names what went wrong, where (a URL and object key, never a
credential) and, where there is one, what to do about it.

Example:
    >>> import cloudckpt
    >>> try:
    ...     cloudckpt.load("/nonexistent/ckpt-1")
    ... except cloudckpt.CheckpointNotFoundError as e:
    ...     print(type(e).__name__)
    CheckpointNotFoundError
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "CheckpointExistsError",
    "OwnershipLostError",
    "FormatVersionError",
    "StorageError",
    "ObjectNotFoundError",
    "ObjectExistsError",
    "WeakCommitWarning",
    "StoragePermissionError",
    "TruncatedObjectError",
    "OversizedObjectError",
]


class CheckpointError(Exception):
    """Base class of every error cloudckpt raises about a checkpoint or its storage.

    Example:
        >>> issubclass(CorruptCheckpointError, CheckpointError)
        True
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """There is no committed checkpoint (no ``manifest.json``) at the given URL.

    Example:
        >>> issubclass(CheckpointNotFoundError, FileNotFoundError)
        True
    """


class CorruptCheckpointError(CheckpointError):
    """A committed checkpoint is damaged: an object is missing, truncated or
    fails its crc32c, or the manifest does not parse. The message names the
    object.

    Example:
        >>> str(CorruptCheckpointError("crc32c mismatch in s3://b/ckpt-1/x"))
        'crc32c mismatch in s3://b/ckpt-1/x'
    """


class CheckpointExistsError(CheckpointError, FileExistsError):
    """A committed checkpoint already exists where a save was asked to write one.
    Committed checkpoints are never overwritten in place.

    Example:
        >>> issubclass(CheckpointExistsError, FileExistsError)
        True
    """


class OwnershipLostError(CheckpointError):
    """Another manager has claimed the checkpoint directory; this one may no
    longer save or delete there.

    Example:
        >>> issubclass(OwnershipLostError, CheckpointError)
        True
    """


class FormatVersionError(CheckpointError):
    """The checkpoint was written in a newer format than this cloudckpt reads.

    Example:
        >>> issubclass(FormatVersionError, CheckpointError)
        True
    """


class StorageError(CheckpointError, OSError):
    """A storage request failed (after retries if the failure looked transient).

    Attributes ``url`` (the object's URL, credentials never included),
    ``operation`` and ``transient``.

    Example:
        >>> e = StorageError("write failed", url="s3://b/k", operation="write")
        >>> e.url, e.operation
        ('s3://b/k', 'write')
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        operation: str | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.operation = operation
        self.transient = transient

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (
            _rebuild_storage_error,
            (type(self), str(self), self.url, self.operation, self.transient),
        )


def _rebuild_storage_error(cls, message, url, operation, transient):  # type: ignore[no-untyped-def]
    return cls(message, url=url, operation=operation, transient=transient)


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """A storage object that should exist does not.

    Example:
        >>> issubclass(ObjectNotFoundError, FileNotFoundError)
        True
    """


class ObjectExistsError(StorageError, FileExistsError):
    """A create-only write found the object already there (the write changed nothing).

    Example:
        >>> issubclass(ObjectExistsError, FileExistsError)
        True
    """


class WeakCommitWarning(UserWarning):
    """A create-only write (a commit, an ownership claim) on a store that cannot make it atomic.

    The store's filesystem offers no write that fails when the object exists,
    so cloudckpt checks that the object is absent, then writes it. A committed
    manifest is still never overwritten by a later save; what is lost is the
    guarantee between two processes writing to one directory at the same
    moment (fencing). Turn the warning into an error to refuse such stores:
    ``warnings.filterwarnings("error", category=WeakCommitWarning)``; the
    refused write then changes nothing.

    Example:
        >>> issubclass(WeakCommitWarning, UserWarning)
        True
    """


class StoragePermissionError(StorageError, PermissionError):
    """The backend refused a request: missing or wrong credentials, or no permission.

    Example:
        >>> issubclass(StoragePermissionError, PermissionError)
        True
    """


class TruncatedObjectError(StorageError):
    """A read wanted more bytes of an object than the object holds.

    Example:
        >>> issubclass(TruncatedObjectError, StorageError)
        True
    """


class OversizedObjectError(StorageError):
    """An object holds more bytes than the size it was read as (its recorded size).

    Example:
        >>> issubclass(OversizedObjectError, StorageError)
        True
    """
