"""Storage options of a command, and what it must keep secret.

A command's options come from the environment (:func:`env_storage_options`)
and from repeatable ``KEY=VALUE`` flags (:func:`parse_option`; VALUE is JSON
if it parses). While one command runs, this module remembers the
credentials it was given (options and credential environment variables),
the storages it opened and the option names the user typed: :func:`redact`
masks those credentials in everything the command prints, and the error
messages name the URL and the option at fault.

Example:
    >>> parse_option("max_concurrency=4"), parse_option("key=abc")
    (('max_concurrency', 4), ('key', 'abc'))
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click

from cloudckpt.storage import open_storage
from cloudckpt.storage.redact import secrets_of
from cloudckpt.tools.cli.storage_questions import backend_name, redact_text

__all__ = [
    "reset_command",
    "parse_option",
    "env_storage_options",
    "storage_options_for",
    "redact",
    "open_checked",
    "UnknownOptionError",
]

# per command: the credentials it was given (options and environment), the
# storages it opened, and the option names the user passed
_secrets: set[str] = set()
_opened: list[Any] = []
_given: set[str] = set()


def reset_command() -> None:
    """Forget the previous command's options (each command starts here).

    Example:
        >>> _secrets.add("hunter2-hunter2"); reset_command(); redact("said hunter2-hunter2")
        'said hunter2-hunter2'
    """
    _secrets.clear()
    _secrets.update(secrets_of({}))  # the credential environment variables
    _opened.clear()
    _given.clear()


def parse_option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE)``; VALUE is JSON if it parses, else the string.

    Example:
        >>> parse_option('client_kwargs={"region_name": "eu-west-1"}')
        ('client_kwargs', {'region_name': 'eu-west-1'})
        >>> parse_option("anon=true"), parse_option('secret="123"')
        (('anon', True), ('secret', '123'))
    """
    if "=" not in text:
        raise click.BadParameter(f"expected KEY=VALUE, got {_redact_option(text)!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise click.BadParameter("empty KEY in KEY=VALUE")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key, parsed


def _redact_option(text: str) -> str:
    return text.split("=", 1)[0] + "=***" if "=" in text else "***"


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "local"


def env_storage_options(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Storage options for ``url`` from environment variables the backend does not read itself.

    S3 (s3fs/botocore) reads ``AWS_*`` itself, ``AWS_ENDPOINT_URL`` included;
    GCS (gcsfs/google-auth) reads ``GOOGLE_APPLICATION_CREDENTIALS``. For
    ``gs://`` with ``STORAGE_EMULATOR_HOST`` set this returns the emulator's
    ``endpoint_url`` and ``token="anon"`` (an emulator takes no credentials,
    and an explicit endpoint keeps gcsfs off Google's gRPC API).

    Example:
        >>> env_storage_options("gs://b/run", {"STORAGE_EMULATOR_HOST": "localhost:4443"})
        {'endpoint_url': 'http://localhost:4443', 'token': 'anon'}
        >>> env_storage_options("s3://b/run", {"AWS_ENDPOINT_URL": "http://x"})
        {}
    """
    env = os.environ if environ is None else environ
    proto = _protocol(url)
    out: dict[str, Any] = {}
    if proto in ("gs", "gcs"):
        host = env.get("STORAGE_EMULATOR_HOST")
        if host:
            out["endpoint_url"] = host if "://" in host else f"http://{host}"
            out["token"] = "anon"
    return out


def storage_options_for(url: str, *option_lists: Iterable[str]) -> dict[str, Any] | None:
    """Environment options for ``url`` overridden by ``KEY=VALUE`` lists, in order.

    Their credentials are remembered, so that :func:`redact` masks them.

    Example:
        >>> storage_options_for("memory://x", ["a=1"], ["a=2", "b=x"])
        {'a': 2, 'b': 'x'}
    """
    opts = env_storage_options(url)
    for options in option_lists:
        for text in options:
            k, v = parse_option(text)
            opts[k] = v
            _given.add(k)
    _secrets.update(secrets_of(opts))
    return opts or None


def redact(text: str) -> str:
    """``text`` with every credential masked where it appears as one.

    Masked: values of credential fields (``secret=...``, ``"token": "..."``,
    ``AWS_SECRET_ACCESS_KEY=...``, ``X-Amz-Signature=...``), the password of a
    URL's userinfo, and the credentials this command was given (options,
    credential environment variables) where one stands as a whole token of
    at least 8 characters. Never part of a word: the secret ``test`` leaves
    ``latest`` alone.

    Example:
        >>> _secrets.update({"test", "hunter2-hunter2"})
        >>> redact("latest: s3://b/run/ckpt-5; secret=test; said hunter2-hunter2")
        'latest: s3://b/run/ckpt-5; secret=***; said ***'
        >>> reset_command()
    """
    return redact_text(text, _secrets)


def redact_backend_text(text: str) -> str:
    """A backend's own error text with this command's credentials masked
    (from the storage layer's shorter lower bound: it may quote its configuration)."""
    return redact_text(text, _secrets, command_output=False)


def given_option(name: str) -> bool:
    """Whether the user gave the storage option ``name`` (``-o``, ``--src-option``, ...)."""
    return name in _given


def opened_storage(url: str) -> Any:
    """The storage this command opened that holds ``url`` (else the last one opened, or None)."""
    where = next((s for s in _opened if url == s.url or url.startswith(s.url + "/")), None)
    return where or (_opened[-1] if _opened else None)


def opened() -> list[Any]:
    """The storages this command opened, in order."""
    return list(_opened)


class UnknownOptionError(ValueError):
    """A storage option the user gave that the backend does not take (exit status 2)."""


def open_checked(url: str, options: dict[str, Any] | None) -> Any:
    """Open ``url`` for a command: the storage is remembered (a missing bucket
    is named when the command finds nothing) and the options the user gave
    are checked against what the backend takes (:class:`UnknownOptionError`
    for an unknown one).

    Example:
        >>> open_checked("memory://doc-open-checked", None).url
        'memory://doc-open-checked'
    """
    storage = open_storage(url, options)
    _opened.append(storage)
    accepted = storage.accepted_options()
    if accepted is not None:
        unknown = sorted(k for k in (options or {}) if k in _given and k not in accepted)
        if unknown:
            ctx = click.get_current_context(silent=True)
            one_side = ""
            if ctx is not None and ctx.info_name == "cp":
                one_side = "; --src-option or --dst-option gives an option to one side only"
            raise UnknownOptionError(
                f"unknown storage option {_names(unknown)} for {storage.url}: {backend_name(storage)} takes only "
                f"{', '.join(sorted(accepted))}; check the spelling or drop it{one_side} "
                "(storage options: `cloudckpt --help`)"
            )
    return storage


def open_with(url: str, options: Sequence[str]) -> Any:
    """Open ``url`` with its environment options and the ``KEY=VALUE`` ``options``."""
    return open_checked(url, storage_options_for(url, options))


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)
