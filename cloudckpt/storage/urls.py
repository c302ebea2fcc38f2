"""URLs and keys: validating a key, joining, splitting and normalising a URL, going up a level.

Example:
    >>> join_url("s3://bucket/run", "ckpt-1"), validate_key("ckpt-1/manifest.json")
    ('s3://bucket/run/ckpt-1', 'ckpt-1/manifest.json')
"""

from __future__ import annotations

import os
import re

__all__ = ["LOCAL_PROTOCOLS", "validate_key", "join_url", "split_url", "normalise_key_path", "parent_of"]

#: what a URL without a scheme, or with one of these, is: a path on local disk
LOCAL_PROTOCOLS = (None, "", "file", "local")


def validate_key(key: str) -> str:
    """Check that ``key`` is a relative key that stays inside its directory.

    Rejects empty keys, absolute keys, backslashes, NUL bytes, and ``.``/``..``
    or empty components. Returns the key unchanged.

    Example:
        >>> validate_key("data-1/w/c/0")
        'data-1/w/c/0'
        >>> validate_key("../other")
        Traceback (most recent call last):
        ...
        ValueError: invalid storage key '../other': component '..' is not allowed
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"invalid storage key {key!r}: must be a non-empty string")
    if key.startswith("/") or "\\" in key or "\x00" in key or "://" in key:
        raise ValueError(f"invalid storage key {key!r}: must be a relative '/'-separated key")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid storage key {key!r}: component {part!r} is not allowed")
    return key


def join_url(base: str, *parts: str) -> str:
    """Join URL or path components with ``/``.

    Example:
        >>> join_url("s3://bucket/run/", "ckpt-1")
        's3://bucket/run/ckpt-1'
    """
    out = base.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


# "s3:/bucket/run" (one slash) or "gs:bucket" is a typo of a URL, not a local folder named "s3:"
_SCHEME_TYPO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):(?!//)(?P<rest>.*)$")
_KNOWN_SCHEMES = {
    "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "file", "local", "http", "https", "hf",
    "hdfs", "ftp", "sftp", "ssh", "oss", "r2", "wasb", "wasbs",
}


def split_url(url: str) -> tuple[str | None, str]:
    """``(protocol or None, the rest)`` of a URL or a plain path; a mistyped
    scheme (``s3:/bucket``) is a ValueError, not a local folder.

    Example:
        >>> split_url("s3://b/run"), split_url("/tmp/run")
        (('s3', 'b/run'), (None, '/tmp/run'))
    """
    if "://" in url:
        protocol, rest = url.split("://", 1)
        return protocol.lower(), rest
    typo = _SCHEME_TYPO.match(url)
    if typo and typo.group("scheme").lower() in _KNOWN_SCHEMES:
        scheme, rest = typo.group("scheme"), typo.group("rest").lstrip("/")
        raise ValueError(f"{url!r} looks like a mistyped URL: did you mean '{scheme}://{rest}'?")
    return None, url


def normalise_key_path(
    protocol: str, rest: str, *, bucketed: bool = False, absolute: bool = False, query: bool = True
) -> str:
    """``rest`` of a URL (after ``protocol://``) with ``.``, ``..`` and empty
    components resolved, as a local path is. ``bucketed``: the first
    component is a bucket, which ``..`` may not leave; ``absolute``: a
    leading ``/`` stays; ``query``: a ``?...`` part is kept apart, as it is.
    The backend of ``protocol`` says which (``Backend.url_path``).

    Example:
        >>> normalise_key_path("s3", "b//run/./x/../ckpt-1?versionId=3", bucketed=True)
        'b/run/ckpt-1?versionId=3'
        >>> normalise_key_path("s3", "b/../c", bucketed=True)
        Traceback (most recent call last):
        ...
        ValueError: s3://b/../c: '..' leaves the bucket
    """
    tail = ""
    if query and "?" in rest:
        rest, tail = rest.split("?", 1)
        tail = "?" + tail
    keep_root = absolute and rest.startswith("/")
    parts: list[str] = []
    for part in rest.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts or (bucketed and len(parts) == 1):
                raise ValueError(f"{protocol}://{rest}: '..' leaves the {'bucket' if bucketed else 'store'}")
            parts.pop()
            continue
        parts.append(part)
    return ("/" if keep_root else "") + "/".join(parts) + tail


def parent_of(root: str, url: str, *, local: bool) -> tuple[str, str] | None:
    """``(root, url)`` of the directory holding the one at ``root`` (a backend
    path) and ``url``; None at the top (a bucket, or the filesystem root).

    Example:
        >>> parent_of("/doc/run/ckpt-1", "memory://doc/run/ckpt-1", local=False)
        ('/doc/run', 'memory://doc/run')
        >>> parent_of("bkt", "s3://bkt", local=False) is None
        True
    """
    root = root.rstrip("/")
    if local:
        up = os.path.dirname(root) if root else ""
        if not root or up == root:
            return None
    else:
        if "/" not in root.lstrip("/"):
            return None
        up = root.rsplit("/", 1)[0]
    if "/" not in url.split("://", 1)[-1].rstrip("/"):
        return None
    parent_url = url.rstrip("/").rsplit("/", 1)[0] or "/"
    if parent_url.endswith(":/") or parent_url.endswith("://"):
        return None  # "file:///x": the root of the filesystem
    return up or "/", parent_url
