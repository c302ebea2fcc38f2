"""Opening a URL: which backend serves it, with what options; the registry of backends.

Example:
    >>> s = open_storage("memory://doc-open/run")
    >>> s.url, s.protocol, s.backend_name
    ('memory://doc-open/run', 'memory', 'MemoryFileSystem')
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from cloudckpt.errors import StorageError
from cloudckpt.storage.backends.local import LocalBackend
from cloudckpt.storage.facade import Storage
from cloudckpt.storage.protocol import Backend
from cloudckpt.storage.redact import redact_text, secrets_of
from cloudckpt.storage.retry import RetryPolicy
from cloudckpt.storage.session import Session
from cloudckpt.storage.urls import LOCAL_PROTOCOLS, split_url

__all__ = ["BACKENDS", "GENERIC_BACKEND", "backend_class", "open_storage", "register_backend"]

#: URL scheme -> "module:class" of its backend; imported when a URL needs it (so a
#: backend's package — s3fs, gcsfs, adlfs — is imported only then). One line per backend.
BACKENDS: dict[str, str] = {
    "s3": "cloudckpt.storage.backends.s3:S3Backend",
    "s3a": "cloudckpt.storage.backends.s3:S3Backend",
    "gs": "cloudckpt.storage.backends.gcs:GCSBackend",
    "gcs": "cloudckpt.storage.backends.gcs:GCSBackend",
    "az": "cloudckpt.storage.backends.azure:AzureBackend",
    "abfs": "cloudckpt.storage.backends.azure:AzureBackend",
    "abfss": "cloudckpt.storage.backends.azure:AzureBackend",
    "memory": "cloudckpt.storage.backends.memory:MemoryBackend",
}
#: the backend of any other scheme fsspec knows
GENERIC_BACKEND = "cloudckpt.storage.backends.fsspec:FsspecBackend"


def register_backend(scheme: str, target: str) -> None:
    """Serve URLs of ``scheme`` with the backend ``target`` (``"module:Class"``,
    imported when such a URL is first opened): how a user's own filesystem
    declares what fsspec cannot ask of it, such as an atomic create-only write
    (subclass :class:`~cloudckpt.storage.backends.fsspec.FsspecBackend`, return
    ``Capabilities(create_only=True, ...)`` from ``declare`` and make
    ``put(..., WriteMode.CREATE_ONLY)`` raise ``FileExistsError`` when the object exists).

    Example:
        >>> register_backend("doc-mem", "cloudckpt.storage.backends.memory:MemoryBackend")
        >>> backend_class("doc-mem").__name__
        'MemoryBackend'
    """
    module, sep, name = target.partition(":")
    if not sep or not module or not name.isidentifier() or not scheme.replace("-", "").isalnum():
        raise ValueError(f"register_backend({scheme!r}, {target!r}): give a URL scheme and 'module:Class'")
    BACKENDS[scheme] = target


def backend_class(protocol: str) -> type[Backend]:
    """The backend class serving URLs of ``protocol`` (its module imported now).

    Example:
        >>> backend_class("memory").__name__, backend_class("hf").__name__
        ('MemoryBackend', 'FsspecBackend')
    """
    module, _, name = BACKENDS.get(protocol, GENERIC_BACKEND).partition(":")
    cls: type[Backend] = getattr(importlib.import_module(module), name)
    return cls


def _backend(cls: type[Backend], protocol: str, url: str, options: dict[str, Any], secrets: list[str]) -> Backend:
    """The backend for ``protocol``, its failures to start said in a message that names no credential."""
    where = f"{protocol}://"
    try:
        backend: Backend = cls(protocol, {**cls.url_options(protocol, url), **options})  # type: ignore[call-arg]
        return backend
    except ImportError as exc:
        raise ImportError(
            f"the URL {where}... needs a filesystem package that is not installed "
            f"({exc}); install the fsspec backend for '{protocol}' (e.g. s3fs, gcsfs, adlfs)"
        ) from None
    except ValueError as exc:
        if "protocol" in str(exc).lower() or "known" in str(exc).lower():
            raise ValueError(
                f"unknown URL scheme '{where}' in {url}: "
                "use a local path or an fsspec URL such as s3://, gs://, memory://"
            ) from None
        raise ValueError(f"bad storage_options for {where}: {redact_text(str(exc), secrets)}") from None
    except TypeError as exc:
        raise TypeError(f"bad storage_options for {where}: {redact_text(str(exc), secrets)}") from None
    except Exception as exc:
        # never chain: the backend's own message or traceback may carry a credential
        raise StorageError(
            f"cannot open {url}: {type(exc).__name__}: {redact_text(str(exc), secrets)}; "
            "check the credentials and endpoint in storage_options or the environment",
            url=url,
            operation="open",
        ) from None


def _checked_timeout(request_timeout: float | None) -> float | None:
    if request_timeout is None:
        return None
    if isinstance(request_timeout, bool) or not isinstance(request_timeout, (int, float)) or not request_timeout > 0:
        raise ValueError(f"request_timeout must be a positive number of seconds or None, got {request_timeout!r}")
    return float(request_timeout)


def open_storage(
    url: str,
    storage_options: dict[str, Any] | None = None,
    *,
    max_concurrency: int | None = None,
    retry: RetryPolicy | None = None,
    fsync: bool = True,
    request_timeout: float | None = None,
) -> Storage:
    """Open the directory at ``url`` (any fsspec URL or a plain path).

    ``storage_options`` go to the backend's filesystem (e.g. ``key``,
    ``secret``, ``endpoint_url`` for S3; ``token``, ``project`` for GCS).
    ``max_concurrency`` bounds the requests in flight (default 16 on object
    stores, 8 on local disk; env ``CLOUDCKPT_MAX_CONCURRENCY``). ``fsync``
    (local disk only) makes every write durable before a commit.
    ``request_timeout`` bounds each request attempt in seconds on network
    backends (async fsspec filesystems: s3, gs, ...); a timed-out attempt is
    retried like any transient failure. Default: the backend's own timeouts.

    Example:
        >>> import tempfile
        >>> s = open_storage(tempfile.mkdtemp())
        >>> s.write("x", b"1"); s.read("x")
        b'1'
    """
    if not isinstance(url, (str, os.PathLike)):
        raise TypeError(f"checkpoint URL must be a str or path, got {type(url).__name__}")
    url = os.fspath(url)
    if not url:
        raise ValueError("checkpoint URL is empty")
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(f"storage_options must be a dict or None, got {type(storage_options).__name__}")
    options = dict(storage_options or {})
    request_timeout = _checked_timeout(request_timeout)
    protocol, rest = split_url(url)
    env_conc = os.environ.get("CLOUDCKPT_MAX_CONCURRENCY")
    retry = retry or RetryPolicy()
    secrets = secrets_of(options)
    if protocol in LOCAL_PROTOCOLS:
        root = os.path.abspath(os.path.expanduser(rest))
        conc = max_concurrency or (int(env_conc) if env_conc else 8)
        shared = Session(LocalBackend(fsync=fsync), "local", conc, retry, secrets, request_timeout)
        # a path is shown as given (normalised, relative stays relative, as TF's names are);
        # a file:// URL too, its path normalised
        display = f"{url.split('://', 1)[0]}://{os.path.normpath(rest)}" if protocol else os.path.normpath(rest)
        if os.path.exists(root) and not os.path.isdir(root):
            raise NotADirectoryError(f"{display} exists and is not a directory")
        return Storage(shared, root, display)
    assert protocol is not None
    cls = backend_class(protocol)
    url = f"{protocol}://{cls.url_path(protocol, rest)}"
    backend = _backend(cls, protocol, url, options, secrets)
    conc = max_concurrency or (int(env_conc) if env_conc else 16)
    shared = Session(backend, protocol, conc, retry, secrets, request_timeout)
    return Storage(shared, backend.path_of(url), url)
