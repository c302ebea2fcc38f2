"""Masking credentials in text: one home for every message cloudckpt prints or raises.

A credential is masked where it appears *as* a credential: the value of a
credential field (``secret=...``, ``"token": "..."``, ``password: ...``, an
``X-Amz-Signature=`` query parameter), the password of a URL's userinfo, and
a known credential value (from storage_options or a credential environment
variable) where it stands as a whole token. Never as an arbitrary substring:
the secret ``test`` of an emulator leaves ``latest`` alone.

Example:
    >>> redact_text("secret=abc, latest", secrets_of({"secret": "abc"}, {}))
    'secret=***, latest'
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["BARE_MIN", "BACKEND_BARE_MIN", "SECRET_ENV", "field_kind", "secrets_of", "redact_text", "scrubbed"]

SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_CLIENT_SECRET",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)
#: a known credential standing alone (not in a credential field) is masked from this many characters
BARE_MIN = 8
#: ... and in a backend's own error text, which may quote its configuration, from this many
BACKEND_BARE_MIN = 4

# the last word of a field name that makes its value a credential
_CREDENTIAL_WORDS = frozenset(
    {
        "secret", "secrets", "token", "password", "passwd", "pwd", "passphrase", "credential", "credentials",
        "signature", "sig", "authorization", "apikey", "sastoken", "connectionstring",
    }
)  # fmt: skip
# words before ``key`` (or ``key_id``) that make it a credential: access_key, account_key, ...
_KEY_QUALIFIERS = frozenset(
    {
        "access", "account", "api", "client", "customer", "encryption", "master", "private", "sas", "secret",
        "shared", "signing", "storage", "subscription",
    }
)  # fmt: skip
# option values that name a mode, not a secret (gcsfs ``token="anon"``, ...)
_NOT_SECRETS = frozenset({"anon", "google_default", "cloud", "cache", "browser"})

# ``name=value`` pairs of a connection string (``;``) or a SAS token / query string (``&``)
_PAIR_RE = re.compile(r"(?:^|[;&?])\s*([A-Za-z][\w.\-]*)=([^;&]+)")
_WORD_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_USERINFO_RE = re.compile(r"(?P<scheme>(?<![\w.+\-])[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/\s@?#'\"<>]+)@")
_FIELD_RE = re.compile(
    r"""(?<![\w.\-"'])(?P<q>["']?)(?P<name>[A-Za-z][\w.\-]*)(?P=q)(?P<sep>\s*(?:=|:(?!//))\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""
    r"""|(?:(?:Bearer|Basic|Token|AWS4-HMAC-SHA256|GOOG4-RSA-SHA256|AWS|SharedKey)\s+)?[^\s,;&'"<>(){}\[\]]+)"""
)


def field_kind(name: str) -> str | None:
    """``"strong"`` if a field of this name holds a credential, ``"weak"`` for a
    bare ``key`` (s3fs' access key id, but also an object's key: masked only
    when its value is a known credential), else None.

    Example:
        >>> [field_kind(n) for n in ("secret", "AWS_SECRET_ACCESS_KEY", "X-Amz-Signature", "AccessKeyId")]
        ['strong', 'strong', 'strong', 'strong']
        >>> [field_kind(n) for n in ("key", "token_count", "latest", "sort_key")]
        ['weak', None, None, None]
    """
    words = [w.lower() for w in _WORD_RE.findall(name)]
    if not words:
        return None
    last = words[-1]
    if last in _CREDENTIAL_WORDS:
        return "strong"
    if last == "key":
        if len(words) == 1:
            return "weak"
        return "strong" if words[-2] in _KEY_QUALIFIERS else None
    if last == "id" and len(words) >= 3 and words[-2] == "key" and words[-3] in _KEY_QUALIFIERS:
        return "strong"
    if last == "string" and len(words) >= 2 and words[-2] == "connection":
        return "strong"
    return None


def _embedded(value: str) -> list[str]:
    """The credential values inside a credential that is a list of ``name=value``
    pairs: an Azure connection string's ``AccountKey`` and ``SharedAccessSignature``,
    a SAS token's ``sig``."""
    return [v.strip() for k, v in _PAIR_RE.findall(value) if field_kind(k) == "strong" and v.strip()]


def secrets_of(options: dict[str, Any] | None, environ: Any = None) -> list[str]:
    """The credential values of ``options`` (every value under a credential
    field, nested dicts included) and of the credential environment variables
    (:data:`SECRET_ENV`), longest first; a credential made of ``name=value``
    pairs (an Azure connection string, a SAS token) adds the credentials in it.

    Example:
        >>> secrets_of({"key": "AKID", "secret": "s3cr3t", "client_kwargs": {"region_name": "eu"}}, {})
        ['s3cr3t', 'AKID']
        >>> secrets_of({"token": "anon"}, {"AWS_SECRET_ACCESS_KEY": "test"})
        ['test']
        >>> secrets_of({"connection_string": "AccountName=a;AccountKey=S3CR3T=="}, {})
        ['AccountName=a;AccountKey=S3CR3T==', 'S3CR3T==']
    """
    found: set[str] = set()

    def walk(d: Any, sensitive: bool) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, sensitive or field_kind(str(k)) is not None)
        elif isinstance(d, (list, tuple)):
            for v in d:
                walk(v, sensitive)
        elif sensitive and isinstance(d, (str, int)) and not isinstance(d, bool):
            text = str(d)
            if text and text not in _NOT_SECRETS:
                found.add(text)
                found.update(_embedded(text))

    walk(options or {}, False)
    env = os.environ if environ is None else environ
    for name in SECRET_ENV:
        value = env.get(name)
        if value:
            found.add(value)
            found.update(_embedded(value))
    return sorted(found, key=lambda x: (-len(x), x))


@functools.lru_cache(maxsize=64)
def _bare_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    if not secrets:
        return None
    alternation = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
    # a whole token: no letter, digit, "_" or "-" on either side ("." only ends a token)
    return re.compile(rf"(?<![\w\-])(?<!\w\.)(?:{alternation})(?![\w\-])(?!\.\w)")


def _mask_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return f"{value[0]}***{value[0]}"
    return "***"


def redact_text(text: str, secrets: Sequence[str] = (), *, bare_min: int = BACKEND_BARE_MIN) -> str:
    """``text`` with every credential masked where it appears as one.

    Masked: the value of a credential field (``secret=...``, ``'token': '...'``,
    ``"password": "..."``, ``X-Amz-Signature=...``, ``AWS_SECRET_ACCESS_KEY=...``;
    a bare ``key`` field only when its value is one of ``secrets``); the
    password of a URL's userinfo (``s3://user:***@bucket``); a value of
    ``secrets`` of at least ``bare_min`` characters where it stands as a
    whole token (the default suits a backend's error text; the command line
    masks its own output from :data:`BARE_MIN`). Nothing else: a secret
    never masks part of a word.

    Example:
        >>> redact_text("latest: s3://bkt/run/ckpt-5, secret=test", ["test"])
        'latest: s3://bkt/run/ckpt-5, secret=***'
        >>> redact_text("GET https://h/o?X-Amz-Signature=abc&x=1 for AKIAEXAMPLE1", ["AKIAEXAMPLE1"])
        'GET https://h/o?X-Amz-Signature=***&x=1 for ***'
        >>> redact_text("{'key': 'AKID', 'secret': 'x'} ftp://bob:pw@host/p", ["AKID"])
        "{'key': '***', 'secret': '***'} ftp://bob:***@host/p"
    """
    if not text:
        return text

    def userinfo(m: re.Match[str]) -> str:
        info = m.group("info")
        user = info.split(":", 1)[0] + ":***" if ":" in info else "***"
        return f"{m.group('scheme')}{user}@"

    text = _USERINFO_RE.sub(userinfo, text)
    known = set(secrets)
    out: list[str] = []
    pos = at = 0
    while (m := _FIELD_RE.search(text, at)) is not None:
        kind = field_kind(m.group("name"))
        value = m.group("value")
        if kind == "weak" and m.start() > 0 and text[m.start() - 1] in "?&":
            kind = "strong"  # ?key=... in a URL: an API key
        raw = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value
        if kind == "strong" or (kind == "weak" and raw in known):
            out.append(text[pos : m.start("value")])
            out.append(_mask_value(value))
            pos = at = m.end()
        else:
            at = m.end("sep")  # not a credential: its value may hold fields of its own (url=...?sig=...)
    out.append(text[pos:])
    text = "".join(out)
    pattern = _bare_pattern(tuple(sorted(s for s in known if len(s) >= bare_min)))
    return text if pattern is None else pattern.sub("***", text)


def scrubbed(exc: BaseException, secrets: Sequence[str]) -> BaseException | None:
    """The exception to chain as the cause of a translated error, unless its
    text or a cause of its own carries a credential as one (then None: a
    traceback prints the whole chain).

    Example:
        >>> scrubbed(OSError("bad secret=x"), []) is None, scrubbed(OSError("gone"), []) is not None
        (True, True)
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if redact_text(text, secrets) != text:
            return None
        e = e.__cause__ or e.__context__
    return exc
