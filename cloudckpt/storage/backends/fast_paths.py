"""The private parts of gcsfs that cloudckpt uses, each behind one function that detects it.

cloudckpt uses the public API of fsspec, s3fs and gcsfs wherever one does the
job. Three needs on GCS have none that meets a measured target (see
docs/cloud.md, "Public APIs and the fast paths"):

* ``gcs-single-try`` — gcsfs retries every request 6 times with up to ~30 s
  of backoff, under cloudckpt's own retries; gcsfs has no option to turn
  that off. Fast path: a subclass whose requests are tried once.
* ``gcs-stream-read`` — a ranged GET streamed into the caller's buffers.
  Public path: ``cat_file(path, start, end)`` in ranges of 8 MiB, each a
  temporary ``bytes`` copied into the buffers.
* ``gcs-buffers-upload`` — one multipart upload sent from several buffers
  without joining them. Public path: ``pipe_file`` of their join (gcsfs
  then builds its multipart body: one more copy).

Each function returns the fast path, or None: then the caller takes the
public path, and the reason is logged once per process and need (logger
``cloudckpt``: WARNING where the installed gcsfs lacks what the fast path
needs, or has it with another signature; INFO where it was forced). Force
the public paths with the environment variable ``CLOUDCKPT_PUBLIC_PATHS``
(``all``, or a comma list of the need names above), read whenever a
storage is opened, or with ``public=True``.

Example:
    >>> sorted(NEEDS)
    ['gcs-buffers-upload', 'gcs-single-try', 'gcs-stream-read']
    >>> gcs_stream_reader(object(), public=True) is None  # forced: the public path
    True
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from cloudckpt.storage.backends.fsspec import drain

__all__ = [
    "ENV_VAR",
    "NEEDS",
    "forced_public",
    "gcs_single_try_class",
    "gcs_stream_reader",
    "gcs_buffers_uploader",
]

#: the environment variable that forces the public paths: "all" or a comma list of NEEDS
ENV_VAR = "CLOUDCKPT_PUBLIC_PATHS"
#: each need met by a private path, and what is done instead when it falls back
NEEDS = {
    "gcs-single-try": "gcsfs retries each request itself (6 tries, up to ~30 s of backoff) under cloudckpt's retries",
    "gcs-stream-read": "reads go through gcsfs cat_file in ranges of 8 MiB, each a temporary copy",
    "gcs-buffers-upload": "uploads join their buffers and gcsfs copies the join into its multipart body",
}
# the most bytes written to the socket per await while sending an upload body
_PIECE = 1 << 20

logger = logging.getLogger("cloudckpt")
_LOGGED: set[str] = set()
_LOGGED_LOCK = threading.Lock()
_SINGLE_TRY: dict[Any, Any] = {}


def forced_public(need: str) -> bool:
    """Whether ``CLOUDCKPT_PUBLIC_PATHS`` asks for the public path of ``need``.

    Example:
        >>> import os; saved = os.environ.pop(ENV_VAR, None)
        >>> os.environ[ENV_VAR] = "gcs-stream-read"
        >>> forced_public("gcs-stream-read"), forced_public("gcs-single-try")
        (True, False)
        >>> os.environ[ENV_VAR] = "all"; forced_public("gcs-single-try")
        True
        >>> _ = os.environ.pop(ENV_VAR); _ = saved is None or os.environ.setdefault(ENV_VAR, saved)
    """
    names = {n.strip().lower() for n in os.environ.get(ENV_VAR, "").split(",") if n.strip()}
    return bool(names & {"all", "1", "true", need})


def _fall_back(need: str, reason: str, *, forced: bool = False) -> None:
    """Log (once per process and need) why ``need`` takes the public path."""
    with _LOGGED_LOCK:
        if need in _LOGGED:
            return
        _LOGGED.add(need)
    logger.log(
        logging.INFO if forced else logging.WARNING,
        "cloudckpt fast path %s not used: %s; so %s",
        need,
        reason,
        NEEDS[need],
    )


def _forced(need: str, public: bool | None) -> bool:
    if public or (public is None and forced_public(need)):
        how = "public=True" if public else f"{ENV_VAR}={os.environ.get(ENV_VAR, '')}"
        _fall_back(need, f"the public path was asked for ({how})", forced=True)
        return True
    return False


def _takes(fn: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether ``fn`` can be called with these arguments (its signature binds them)."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def _missing(obj: Any, checks: dict[str, Callable[[Any], bool]]) -> str | None:
    """The first attribute of ``obj`` that is absent or fails its check, described; None if all pass."""
    for name, ok in checks.items():
        try:
            value = getattr(obj, name)
        except Exception:  # a property that raises counts as absent
            return f"{type(obj).__name__}.{name} is absent"
        if not ok(value):
            return f"{type(obj).__name__}.{name} has another type or signature than this cloudckpt knows"
    return None


def gcs_single_try_class(cls: Any, *, public: bool | None = None) -> Any | None:
    """A subclass of gcsfs' filesystem class ``cls`` whose requests are tried
    once, leaving retries to cloudckpt; None where gcsfs' ``_request`` is not
    (or no longer) a retrying wrapper around a coroutine, or the public path
    is forced (then ``cls`` retries on its own).

    Example:
        >>> class Plain:
        ...     async def _request(self, *args): return args
        >>> gcs_single_try_class(Plain) is None  # no retrying wrapper to undo
        True
    """
    need = "gcs-single-try"
    if _forced(need, public):
        return None
    sub = _SINGLE_TRY.get(cls)
    if sub is not None:
        return sub
    wrapper = getattr(cls, "_request", None)
    inner = getattr(wrapper, "__wrapped__", None)
    if wrapper is None or inner is None or not inspect.iscoroutinefunction(inner):
        _fall_back(need, f"{cls.__module__}.{cls.__name__}._request is not a retrying wrapper of a coroutine")
        return None
    if not _takes(inner, None, "GET", "b/{}/o", "bucket", headers=None, data=None):
        _fall_back(need, f"{cls.__module__}.{cls.__name__}._request takes other arguments than this cloudckpt knows")
        return None

    async def _request(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await inner(self, *args, **kwargs)

    _request.__doc__ = "gcsfs' request, tried once: cloudckpt's RetryPolicy retries."
    sub = type(cls.__name__, (cls,), {"_request": _request, "__doc__": cls.__doc__})
    _SINGLE_TRY[cls] = sub
    return sub


def gcs_stream_reader(fs: Any, *, public: bool | None = None) -> Callable[..., Awaitable[int]] | None:
    """``async read(path, views, start, total) -> bytes read``: one ranged GET
    of gcsfs filesystem ``fs`` whose body is streamed into ``views`` (no
    temporary copy of the range); None where ``fs`` lacks the gcsfs internals
    it uses, or the public path is forced.

    Example:
        >>> gcs_stream_reader(object()) is None
        True
    """
    need = "gcs-stream-read"
    if _forced(need, public):
        return None
    try:
        from gcsfs.retry import validate_response
    except ImportError:
        _fall_back(need, "gcsfs.retry.validate_response is absent")
        return None
    problem = _missing(fs, {
        "_set_session": inspect.iscoroutinefunction,
        "_get_headers": lambda f: _takes(f, {}),
        "_get_params": lambda f: _takes(f, {}),
        "url": lambda f: _takes(f, "bucket/key"),
        "requests_timeout": lambda v: True,
    }) or (None if _takes(validate_response, 404, b"", "p") else "gcsfs.retry.validate_response takes other arguments")
    if problem is None and not hasattr(type(fs), "session"):
        problem = f"{type(fs).__name__}.session is absent"
    if problem is not None:
        _fall_back(need, problem)
        return None

    async def read(path: str, views: list[memoryview], start: int, total: int) -> int:
        await fs._set_session()
        headers = fs._get_headers({"Range": f"bytes={start}-{start + total - 1}"})
        async with fs.session.get(
            url=fs.url(path), params=fs._get_params({}), headers=headers, timeout=fs.requests_timeout
        ) as r:
            if r.status >= 400:
                validate_response(r.status, await r.read(), path)
            if r.status != 206 and start:
                raise OSError(f"{path}: the server ignored the Range of a ranged read (HTTP {r.status})")
            return await drain(r.content.read, views)

    return read


def gcs_buffers_uploader(fs: Any, *, public: bool | None = None) -> Callable[..., Awaitable[None]] | None:
    """``async upload(path, views)``: one multipart upload (as gcsfs'
    ``simple_upload``) to gcsfs filesystem ``fs`` whose body is sent from
    ``views`` in pieces, never joined; None where ``fs`` lacks the gcsfs
    internals it uses, or the public path is forced.

    Example:
        >>> gcs_buffers_uploader(object()) is None
        True
    """
    need = "gcs-buffers-upload"
    if _forced(need, public):
        return None
    try:
        import aiohttp.payload
    except ImportError:  # pragma: no cover - gcsfs requires aiohttp
        _fall_back(need, "aiohttp is absent")
        return None
    problem = _missing(fs, {
        "_call": lambda f: inspect.iscoroutinefunction(f)
        and _takes(f, "POST", "https://h/upload", uploadType="multipart", headers={}, data=b"", json_out=True),
        "_location": lambda v: isinstance(v, str) and v.startswith("http"),
        "split_path": lambda f: _takes(f, "bucket/key"),
        "invalidate_cache": lambda f: _takes(f, "bucket/key"),
    })
    if problem is not None:
        _fall_back(need, problem)
        return None
    from urllib.parse import quote

    class Body(aiohttp.payload.Payload):
        """A multipart body sent from its parts as they are (aiohttp asks for ``write``)."""

        def __init__(self, parts: list[memoryview]) -> None:
            super().__init__(parts, content_type='multipart/related; boundary="==0=="')
            self._size = sum(v.nbytes for v in parts)

        def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
            raise TypeError("an upload body of raw bytes")

        async def write(self, writer: Any) -> None:
            for v in self._value:
                for at in range(0, v.nbytes, _PIECE):
                    await writer.write(v[at : at + _PIECE])

        async def write_with_length(self, writer: Any, content_length: int | None) -> None:
            await self.write(writer)  # the length is ours: always the whole body

    async def upload(path: str, views: list[memoryview]) -> None:
        bucket, key, _generation = fs.split_path(path)
        head = (
            "--==0==\nContent-Type: application/json; charset=UTF-8\n\n"
            + json.dumps({"name": key})
            + "\n--==0==\nContent-Type: application/octet-stream\n\n"
        ).encode()
        body = Body([memoryview(head), *(v for v in views if v.nbytes), memoryview(b"\n--==0==--")])
        await fs._call(
            "POST",
            f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
            uploadType="multipart",
            headers={"Content-Type": 'multipart/related; boundary="==0=="'},
            data=body,
            json_out=True,
        )
        fs.invalidate_cache(path)

    return upload
