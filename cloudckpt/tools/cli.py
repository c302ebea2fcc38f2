"""The ``cloudckpt`` command: list, inspect, verify, copy, remove and clean checkpoints on any URL.

Run ``cloudckpt --help`` or ``cloudckpt COMMAND --help``; docs/cli.md has
the whole reference. Every command takes local paths and fsspec URLs
(``s3://``, ``gs://``, ``memory://``, ...). Storage options come from the
backends' own environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...), from
``STORAGE_EMULATOR_HOST`` for a GCS emulator, and from repeatable
``--option KEY=VALUE`` (``--src-option``/``--dst-option`` for ``cp``); a
VALUE is parsed as JSON if it parses, else taken as a string.

Example:
    >>> from click.testing import CliRunner
    >>> import numpy as np, cloudckpt
    >>> _ = cloudckpt.save("memory://doc-cli/ckpt-1", {"w": np.ones(2)})
    >>> result = CliRunner().invoke(main, ["ls", "memory://doc-cli"])
    >>> result.exit_code, "committed" in result.output
    (0, True)
    >>> parse_option("max_concurrency=4"), parse_option("key=abc")
    (('max_concurrency', 4), ('key', 'abc'))
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click

from cloudckpt import __about__
from cloudckpt import demo as _demo
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
from cloudckpt.storage import BARE_MIN, _redact_text, _secrets_of, open_storage

__all__ = ["main", "parse_option", "env_storage_options", "storage_options_for", "EXIT"]

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

#: the help of the whole command (``cloudckpt --help``): exit statuses, storage options, credentials
EPILOG = """\b
Exit statuses (every command):
  0  success (verify: nothing damaged)
  1  damage found: verify found a damaged object or manifest, or a
     copy/inspect met a corrupt checkpoint
  2  usage error: bad arguments, a malformed or unknown --option,
     an unknown URL scheme
  3  not found: no checkpoint (or no directory of checkpoints) there,
     or no such bucket
  4  storage error: permission denied, bad credentials, unreachable
     endpoint, missing backend package, other I/O failure
  5  refused: the destination holds a different committed checkpoint,
     `rm` of the latest checkpoint without --yes, a checkpoint written
     by a newer cloudckpt, a directory owned by another manager
\b
Storage options (every command that takes a URL): the backends read
their own environment variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_PROFILE,
GOOGLE_APPLICATION_CREDENTIALS, ...); STORAGE_EMULATOR_HOST points gs://
URLs at an emulator (anonymous). -o/--option KEY=VALUE adds or overrides
one (VALUE is JSON if it parses); an option the backend does not take is
a usage error. Credentials are never printed: values of credential
fields, URL passwords and signed query strings are shown as ***."""

#: the epilog of every subcommand: where the shared paragraphs are
SEE_ALSO = "Exit statuses, storage options (-o, environment variables) and credentials: see `cloudckpt --help`."

# options every fsspec filesystem takes (its instance cache and listings cache)
_GENERIC_OPTIONS = frozenset({"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths"})
# what fsspec's local filesystem takes: a local path accepts (and ignores) these
_LOCAL_OPTIONS = _GENERIC_OPTIONS | {"auto_mkdir"}
# backends whose filesystem silently ignores an option it does not know (s3fs
# passes one on to aiobotocore, which rejects it at the first request)
_SILENT_BACKENDS = ("memory", "gs", "gcs")
_UNEXPECTED_KWARG = re.compile(r"unexpected keyword argument '([^']+)'")

F = TypeVar("F", bound=Callable[..., Any])


# -- storage options ------------------------------------------------------------


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
    _secrets.update(_secrets_of(opts))
    return opts or None


def _filesystem(storage: Any) -> Any:
    """The fsspec filesystem behind ``storage`` (None on local disk): for the
    two questions the storage verbs do not answer, which options it takes
    and whether a bucket exists."""
    return getattr(getattr(storage._s, "backend", None), "fs", None)


def _accepted_options(storage: Any) -> frozenset[str] | None:
    """The option names the backend of ``storage`` takes, where it would
    silently ignore others; None where the backend reports them itself."""
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


def _open(url: str, options: dict[str, Any] | None) -> Any:
    """Open ``url`` for a command: the storage is remembered (a missing bucket
    is named when the command finds nothing) and the options the user gave
    are checked against what the backend takes (exit 2 for an unknown one)."""
    storage = open_storage(url, options)
    _opened.append(storage)
    accepted = _accepted_options(storage)
    if accepted is not None:
        unknown = sorted(k for k in (options or {}) if k in _given and k not in accepted)
        if unknown:
            where = "a local path" if storage.is_local else f"{storage.protocol}:// ({type(_filesystem(storage)).__name__})"
            ctx = click.get_current_context(silent=True)
            one_side = ""
            if ctx is not None and ctx.info_name == "cp":
                one_side = "; --src-option or --dst-option gives an option to one side only"
            _fail(
                EXIT["usage"],
                f"unknown storage option {_names(unknown)} for {storage.url}: {where} takes only "
                f"{', '.join(sorted(accepted))}; check the spelling or drop it{one_side} "
                "(storage options: `cloudckpt --help`)",
            )
    return storage


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _storage(url: str, options: Sequence[str]) -> Any:
    return _open(url, storage_options_for(url, options))


# -- redaction ------------------------------------------------------------------

# per command: the credentials it was given (options and environment), the
# storages it opened, and the option names the user passed
_secrets: set[str] = set()
_opened: list[Any] = []
_given: set[str] = set()


def _reset() -> None:
    _secrets.clear()
    _secrets.update(_secrets_of({}))  # the credential environment variables
    _opened.clear()
    _given.clear()


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
        >>> _reset()
    """
    return _redact_text(text, sorted(_secrets), bare_min=BARE_MIN)


class _EchoHandler(logging.Handler):
    """Log records to the current stderr (click's, under a test runner), credentials redacted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(redact(self.format(record)), err=True)
        except Exception:  # pragma: no cover - never let logging break a command
            self.handleError(record)


# -- errors ---------------------------------------------------------------------


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
            if m and m.group(1) in _given:
                return m.group(1)
    return None


def _classify(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    rejected = _rejected_option(exc)
    if rejected is not None:
        url = str(getattr(exc, "url", None) or "")
        where = next((s for s in _opened if url == s.url or url.startswith(s.url + "/")), None)
        where = where or (_opened[-1] if _opened else None)
        name = f"{where.url} ({where.protocol} backend)" if where is not None else "the URL"
        return EXIT["usage"], (
            f"unknown storage option '{rejected}' for {name}: the backend rejected it at the first request "
            f"(got an unexpected keyword argument '{rejected}'); check the spelling or drop it "
            "(storage options: `cloudckpt --help`)"
        )
    if isinstance(exc, CorruptCheckpointError):
        return EXIT["damaged"], str(exc)
    if isinstance(exc, (CheckpointNotFoundError, ObjectNotFoundError)):
        return EXIT["not_found"], _missing_bucket() or str(exc)
    if isinstance(exc, (CheckpointExistsError, OwnershipLostError, FormatVersionError)):
        return EXIT["refused"], str(exc)
    from cloudckpt.tools.admin import RefusedError

    if isinstance(exc, RefusedError):
        return EXIT["refused"], str(exc)
    if isinstance(exc, StorageError):
        return EXIT["storage"], str(exc)
    if isinstance(exc, CheckpointError):
        return EXIT["damaged"], str(exc)
    if isinstance(exc, NotADirectoryError):
        return EXIT["usage"], str(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return EXIT["usage"], str(exc)
    if isinstance(exc, ImportError):
        return EXIT["storage"], str(exc)
    # not from the storage layer, which redacts what it quotes: a backend's own text
    text = _redact_text(str(exc), sorted(_secrets))
    if isinstance(exc, OSError):
        return EXIT["storage"], f"{type(exc).__name__}: {text}"
    return EXIT["storage"], f"unexpected {type(exc).__name__}: {text}"


def _missing_bucket() -> str | None:
    """When a command found nothing: name the bucket of a URL it opened that
    does not exist (one request per object-store URL; None if all exist or
    the backend does not say)."""
    for storage in _opened:
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


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"cloudckpt: error: {redact(message)}", err=True)
    sys.exit(code)


def _guard(fn: F) -> F:
    """Turn exceptions into a one-line message (credentials redacted) and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as exc:
            code, message = _classify(exc)
            log.debug("command failed: %s", type(exc).__name__)
            _fail(code, message)

    return wrapper  # type: ignore[return-value]


# -- formatting -----------------------------------------------------------------


def human(n: int | float | None) -> str:
    """Bytes for people.

    Example:
        >>> human(0), human(1536), human(3 * 2**30)
        ('0 B', '1.5 KiB', '3.0 GiB')
    """
    if n is None:
        return "-"
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{int(x)} B" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} PiB"  # pragma: no cover


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and the word, singular or plural.

    Example:
        >>> plural(1, "object"), plural(0, "object"), plural(2, "checkpoint"), plural(3, "entry", "entries")
        ('1 object', '0 objects', '2 checkpoints', '3 entries')
    """
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _echo_json(data: Any) -> None:
    click.echo(redact(json.dumps(data, indent=2, sort_keys=False, default=str)))


def _out(text: str) -> None:
    click.echo(redact(text))


def _err(text: str) -> None:
    click.echo(redact(text), err=True)


# -- progress -------------------------------------------------------------------


def _terminal_size() -> tuple[int, int]:
    """(columns, rows) of the terminal on stderr; 80x24 where it reports 0 (a pty
    created without a size), in which tqdm would otherwise draw nothing."""
    try:
        cols, rows = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        cols, rows = 0, 0
    return (cols if cols > 0 else 80), (rows if rows > 0 else 24)


def _eta(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class _PlainProgress:
    """Progress as plain lines on stderr (no terminal): at most one line per
    ``interval`` seconds, and always the last (100%)."""

    def __init__(self, label: str, unit: str = "B", interval: float = 2.0) -> None:
        self.label = label
        self.unit = unit
        self.t0 = time.monotonic()
        self.last = -1e9
        self.interval = interval

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total <= 0 or (0 < done < total and now - self.last < self.interval):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        pct = 100.0 * min(done, total) / total
        eta = "?" if done < total and rate <= 0 else _eta((total - done) / rate if done < total else 0.0)
        if self.unit == "B":
            line = f"{human(done)} of {human(total)} ({pct:.0f}%), {human(rate)}/s, ETA {eta}"
        else:
            line = f"{done} of {plural(total, self.unit)} ({pct:.0f}%), ETA {eta}"
        click.echo(f"{self.label}: {line}", err=True)


class _Progress:
    """The progress of one long command on stderr: a tqdm bar (amount, rate,
    ETA) when stderr is a terminal, else plain lines (:class:`_PlainProgress`);
    nothing when ``quiet``. ``unit`` is ``"B"`` (bytes) or a noun counted
    (``"item"``). Safe to call from I/O threads."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "B", quiet: bool = False) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._quiet = quiet
        self._tty = not quiet and sys.stderr.isatty()
        self._plain = _PlainProgress(label, unit) if not quiet and not self._tty else None
        self._bar: Any = None
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int | None = None) -> None:
        """Set the amount done (and the total): the callback ``cp`` hands to :func:`cloudckpt.copy`."""
        with self._lock:
            if total is not None:
                self.total = total
            self.done = done
            self._show()

    def advance(self, n: int = 1) -> None:
        """Add ``n`` to the amount done."""
        with self._lock:
            self.done += n
            self._show()

    def _show(self) -> None:
        if self._quiet or self.total is None:
            return
        if self._plain is not None:
            self._plain(self.done, self.total)
            return
        if self._bar is None:
            from tqdm import tqdm

            cols, rows = _terminal_size()
            in_bytes = self.unit == "B"
            self._bar = tqdm(
                total=self.total,
                unit="B" if in_bytes else f" {self.unit}",
                unit_scale=in_bytes,
                unit_divisor=1024,
                desc=self.label,
                file=sys.stderr,
                ncols=cols,
                nrows=rows,
            )
        if self._bar.total != self.total:
            self._bar.total = self.total
        self._bar.update(self.done - self._bar.n)

    def close(self) -> None:
        """Finish the bar (a no-op for plain lines)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


@contextlib.contextmanager
def _ticking(label: str, what: str, *, quiet: bool = False, after: float = 1.0, interval: float = 2.0) -> Iterator[None]:
    """Show that a step which reports no progress of its own is still running:
    from ``after`` seconds on, its elapsed time (redrawn on a terminal, a
    plain line every ``interval`` seconds otherwise)."""
    if quiet:
        yield
        return
    stop = threading.Event()
    tty = sys.stderr.isatty()
    t0 = time.monotonic()
    text = redact(what)

    def run() -> None:
        if stop.wait(after):
            return
        bar: Any = None
        if tty:
            from tqdm import tqdm

            cols, rows = _terminal_size()
            bar = tqdm(
                desc=f"{label}: {text}", bar_format="{desc} [{elapsed}]", file=sys.stderr, ncols=cols, nrows=rows
            )
            bar.start_t -= time.monotonic() - t0  # the elapsed time of the step, not of the bar
        while True:
            if bar is not None:
                bar.refresh()
            else:
                click.echo(f"{label}: {text} ({time.monotonic() - t0:.0f} s so far)", err=True)
            if stop.wait(0.25 if tty else interval):
                break
        if bar is not None:
            bar.close()

    thread = threading.Thread(target=run, name="cloudckpt-ticking", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# -- the command group ----------------------------------------------------------

_option = click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Storage option for the backend (repeatable); VALUE is JSON if it parses, else a string.",
)
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
_quiet = click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__about__.__version__, prog_name="cloudckpt")
@click.option("-v", "--verbose", count=True, help="Log what cloudckpt does to stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Inspect, verify, copy and clean up cloudckpt checkpoints on any fsspec URL
    (local paths, s3://, gs://, memory://, ...)."""
    _reset()
    lg = logging.getLogger("cloudckpt")
    level = lg.level
    handler: logging.Handler
    if verbose:
        handler = _EchoHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        lg.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    else:
        # without -v the commands say everything themselves: no raw log line
        # (Python's last-resort handler prints warnings when none is set)
        handler = logging.NullHandler()
    lg.addHandler(handler)

    def restore() -> None:
        lg.removeHandler(handler)
        lg.setLevel(level)

    click.get_current_context().call_on_close(restore)


# -- ls -------------------------------------------------------------------------


@main.command("ls", epilog=SEE_ALSO)
@click.argument("directory")
@_option
@_json
@_guard
def ls_cmd(directory: str, options: tuple[str, ...], as_json: bool) -> None:
    """List the checkpoints of DIRECTORY: number, time, size, state, latest.

    States: committed; fenced (committed by a manager that had lost the
    directory: never restored, removed by its owner); partial (no manifest:
    a save in progress or crashed); orphaned (no manifest, written under an
    older ownership epoch: certainly a crashed save); corrupt (manifest does
    not parse); newer (newer format). LATEST marks the checkpoint a
    manager restores. Sub-directories under other names that hold a
    checkpoint (saved with cloudckpt.save as DIRECTORY/c4, ...) are listed
    as unmanaged: no manager lists or restores them. Run `cloudckpt gc
    DIRECTORY` to collect garbage.
    """
    from cloudckpt.format.manifest import MANIFEST_KEY
    from cloudckpt.tools.admin import list_directory

    storage = _storage(directory, options)
    if storage.exists(MANIFEST_KEY):
        _fail(EXIT["usage"], f"{storage.url} is a checkpoint, not a directory of checkpoints: use `cloudckpt inspect`")
    listing = list_directory(storage)
    if as_json:
        _echo_json(listing.to_dict())
        return
    rows = []
    for e in listing.entries:
        flags = []
        if e.unmanaged:
            flags.append("unmanaged")
        if e.preserved:
            flags.append("preserved")
        if e.orphaned:
            flags.append(f"+{len(e.orphaned)} orphaned data ({human(e.orphaned_bytes)})")
        number = "-" if e.number is None else str(e.number)
        rows.append(
            [e.name, number, _time(e.created), human(e.size), e.state, "*" if e.latest else "", ", ".join(flags)]
        )
    _out(_table(rows, ["NAME", "NUMBER", "CREATED (UTC)", "SIZE", "STATE", "LATEST", "NOTES"]))
    managed = [e for e in listing.entries if not e.unmanaged]
    unmanaged = [e for e in listing.entries if e.unmanaged]
    committed = sum(1 for e in managed if e.state == "committed")
    about = "not named <name>-<N>: no manager lists or restores them; `cloudckpt inspect` reads one"
    if managed or listing.has_state_file:
        summary = f"{plural(committed, 'committed checkpoint')} in {listing.url}; latest: {listing.latest or 'none'}"
        if unmanaged:
            summary += f"; {plural(len(unmanaged), 'unmanaged checkpoint')} ({about})"
    else:
        summary = f"{plural(len(unmanaged), 'unmanaged checkpoint')} in {listing.url} ({about})"
    if listing.has_state_file and listing.state_file is None:
        summary += "; state file does not parse (a manager rebuilds it)"
    _out(summary)


# -- inspect --------------------------------------------------------------------


def _tree_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    from cloudckpt.format.tree import unflatten
    from cloudckpt.layout.checkpoint_io import describe_leaves

    arrays = describe_leaves(manifest)
    out: list[dict[str, Any]] = []

    def walk(node: Mapping[str, Any], path: tuple[Any, ...], rank: dict[str, int]) -> None:
        t = node["t"]
        if t == "dict":
            for k, v in zip(node["k"], node["v"], strict=True):
                walk(v, (*path, k), rank)
        elif t in ("list", "tuple"):
            for i, v in enumerate(node["v"]):
                walk(v, (*path, i), rank)
        elif t == "per_rank":  # a PerRank value: one row per rank's value (format 3)
            for r, v in enumerate(node["r"]):
                walk(v, path, {"rank": r})
        elif t in ("array", "scalar"):
            a = dict(arrays[node["a"]])
            a.pop("name", None)
            a["kind"] = "scalar" if t == "scalar" else "array"
            out.append({"path": list(path), **rank, **a})
        elif t == "alias":
            out.append({"path": list(path), **rank, "kind": "alias", "of": arrays[node["a"]]["path"]})
        else:
            value = unflatten(node, {})
            out.append({"path": list(path), **rank, "kind": "json", "type": type(value).__name__, "value": value})

    walk(manifest["tree"], (), {})
    return out


@main.command("inspect", epilog=SEE_ALSO)
@click.argument("checkpoint")
@_option
@_json
@_guard
def inspect_cmd(checkpoint: str, options: tuple[str, ...], as_json: bool) -> None:
    """Show what CHECKPOINT holds: tree paths, dtypes, shapes, bytes, and the
    URL of its zarr v3 group (readable with zarr-python alone).

    Given a directory of checkpoints, inspects its latest checkpoint.
    """
    from cloudckpt.format.manifest import MANIFEST_KEY
    from cloudckpt.layout.checkpoint_io import read_manifest
    from cloudckpt.manager.checkpoint_manager import latest_checkpoint

    opts = storage_options_for(checkpoint, options)
    storage = _open(checkpoint, opts)
    if not storage.exists(MANIFEST_KEY):
        latest = latest_checkpoint(checkpoint, opts)
        if latest is None:
            raise CheckpointNotFoundError(
                f"no checkpoint at {storage.url}: {storage.url_for(MANIFEST_KEY)} does not exist, "
                f"and it is not a directory with committed <name>-<N> checkpoints{_unmanaged_hint(storage)}"
            )
        _err(f"{storage.url} is a directory; inspecting its latest checkpoint {latest}")
        storage = _open(latest, opts)
    m = read_manifest(storage)
    rows = _tree_rows(m)
    stored = sum(int(o["size"]) for o in m["objects"])
    data = {
        "url": storage.url,
        "zarr_group": storage.url_for(m["data"]),
        "format_version": m["format_version"],
        "checkpoint_number": m.get("checkpoint_number"),
        "created": m["created"],
        "created_utc": m.get("created_utc"),
        "writer": m["writer"],
        "nbytes": m["nbytes"],
        "stored_bytes": stored,
        "objects": len(m["objects"]) + 1,
        "metadata": m["metadata"],
        "leaves": rows,
    }
    if as_json:
        _echo_json(data)
        return
    head = [
        ("checkpoint", storage.url),
        ("zarr group", data["zarr_group"]),
        ("format version", str(m["format_version"])),
        ("number", str(m.get("checkpoint_number"))),
        ("created (UTC)", _time(float(m["created"]))),
        ("writer", f"{m['writer'].get('library', '?')}, epoch {m['writer'].get('epoch')}"),
        ("tensor bytes", f"{human(m['nbytes'])} in {plural(len(m['arrays']), 'array')}"),
        ("stored", f"{human(stored)} in {plural(len(m['objects']) + 1, 'object')} (manifest included)"),
    ]
    if m["metadata"]:
        head.append(("metadata", json.dumps(m["metadata"], sort_keys=True)))
    width = max(len(k) for k, _ in head)
    _out("\n".join(f"{k.ljust(width)}  {v}" for k, v in head))
    _out("")
    table = []
    for r in rows:
        path = "/".join(str(p) for p in r["path"]) or "<root>"
        if "rank" in r:
            path += f" [rank {r['rank']}]"
        if r["kind"] == "json":
            table.append([path, r["type"], "-", "-", f"json: {json.dumps(r['value'], default=str)[:60]}"])
        elif r["kind"] == "alias":
            of = "/".join(str(p) for p in r["of"]) or "<root>"
            table.append([path, "-", "-", "-", f"same tensor as {of} (tied)"])
        else:
            where = f"{r['stored_as']} {r['zarr_path']}"
            table.append([path, r["dtype"], str(tuple(r["shape"])), human(r["nbytes"]), where])
    _out(_table(table, ["PATH", "DTYPE", "SHAPE", "BYTES", "STORED AS"]))


def _unmanaged_hint(storage: Any) -> str:
    """``; it holds unmanaged checkpoints: URL/c4, ...`` when it does, else ``""``."""
    from cloudckpt.tools.admin import list_directory

    try:
        listing = list_directory(storage)
    except CheckpointNotFoundError:
        return ""
    names = [e.url for e in listing.entries if e.unmanaged and e.state == "committed"]
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"; it holds {plural(len(names), 'unmanaged checkpoint')} (not named <name>-<N>): inspect one of {shown}"


# -- verify ---------------------------------------------------------------------


def _verify_all(path: str, opts: dict[str, Any] | None, progress: _Progress) -> Any:
    """Verify the checkpoint at ``path``, or every checkpoint of the directory
    ``path`` — its ``<name>-<N>`` checkpoints and state file
    (:func:`cloudckpt.verify`), then its unmanaged checkpoints — with
    ``progress`` counting the bytes of the objects checked."""
    from cloudckpt.format.manifest import MANIFEST_KEY
    from cloudckpt.layout.checkpoint_io import read_manifest
    from cloudckpt.tools.admin import list_directory
    from cloudckpt.tools.verify import CheckpointReport, VerifyReport, verify

    storage = _open(path, opts)

    def tick(nbytes: int) -> None:
        progress.advance(nbytes)

    if storage.exists(MANIFEST_KEY):
        try:
            progress(0, sum(int(o["size"]) for o in read_manifest(storage)["objects"]))
        except CheckpointError:
            pass  # a damaged or newer manifest: verify says what is wrong with it
        return verify(path, storage_options=opts, on_object=tick)
    # a directory: the listing reads every manifest once more, to size the progress bar
    listing = list_directory(storage)
    checked = [e for e in listing.entries if e.state in ("committed", "fenced")]
    progress(0, sum(e.size for e in checked))
    managed = [e for e in listing.entries if not e.unmanaged]
    if managed or listing.has_state_file:
        report = verify(path, storage_options=opts, on_object=tick)
    else:
        report = VerifyReport(storage.url, "directory")
    for e in listing.entries:
        if not e.unmanaged:
            continue
        if e.state == "newer":
            report.checkpoints.append(CheckpointReport(e.url, "skipped", note=e.error))
            report.warnings.append(f"{e.url} was written by a newer cloudckpt; not verified")
            continue
        try:
            report.checkpoints.extend(verify(e.url, storage_options=opts, on_object=tick).checkpoints)
        except CheckpointNotFoundError:
            report.warnings.append(f"{e.url} was deleted while it was being verified")
    return report


def _checkpoint_line(c: Any) -> str:
    from cloudckpt.format.manifest import MANIFEST_KEY

    if c.status == "skipped":
        what = "written by a newer cloudckpt: not verified"
    elif c.damaged and all(d.url.endswith("/" + MANIFEST_KEY) for d in c.damaged) and c.objects <= 1:
        what = "its manifest is damaged: no object checked"
    elif c.damaged:
        what = f"{len(c.damaged)} of {plural(c.objects, 'object')} damaged"
    else:
        what = f"{plural(c.objects, 'object')}, {human(c.bytes)}"
    status = {"ok": "ok", "damaged": "DAMAGED", "skipped": "skipped"}[c.status]
    return f"{status:8} {c.url}  ({what})"


@main.command("verify", epilog=SEE_ALSO)
@click.argument("path")
@_option
@_json
@click.option("--strict", is_flag=True, help="Also fail (exit 1) on warnings, e.g. a stale state file.")
@_quiet
@_guard
def verify_cmd(path: str, options: tuple[str, ...], as_json: bool, strict: bool, quiet: bool) -> None:
    """Re-read every object of a checkpoint, or of every checkpoint of a
    directory, and check sizes and crc32c checksums against the manifests.

    Exits 1 and names every damaged object when anything is wrong. For a
    directory, also checks the state file against the manifests (a mismatch
    is a warning: managers rebuild it); its unmanaged checkpoints (see `ls`)
    are verified too. A progress bar (bytes, rate, ETA) is drawn on a
    terminal; otherwise progress goes to stderr as plain lines.
    """
    opts = storage_options_for(path, options)
    progress = _Progress("verify", quiet=quiet)
    t0 = time.monotonic()
    try:
        report = _verify_all(path, opts, progress)
    finally:
        progress.close()
    report.seconds = time.monotonic() - t0
    failed = not report.ok or (strict and bool(report.warnings))
    if as_json:
        _echo_json(report.to_dict())
    else:
        for c in report.checkpoints:
            _out(_checkpoint_line(c))
            for d in c.damaged:
                _out(f"  damaged: {d.url}: {d.problem}")
        for w in report.warnings:
            _out(f"warning: {w}")
        verified = [c for c in report.checkpoints if c.status != "skipped"]
        skipped = len(report.checkpoints) - len(verified)
        tail = (f", {skipped} skipped (newer format)" if skipped else "") + (
            f", {plural(len(report.warnings), 'warning')}" if report.warnings else ""
        )
        if not report.ok:
            bad = sum(1 for c in report.checkpoints if not c.ok)
            _out(
                f"FAILED: {plural(len(report.damaged), 'damaged object')} in {bad} of "
                f"{plural(len(report.checkpoints), 'checkpoint')}{tail}"
            )
        elif not verified:
            _out(f"OK: nothing damaged, but no checkpoint was verified in {report.url}{tail}")
        else:
            _out(
                f"OK: {plural(len(verified), 'checkpoint')} verified ({plural(report.objects_checked, 'object')}, "
                f"{human(report.bytes_checked)} read and checked) in {report.seconds:.2f} s{tail}"
            )
    if failed:
        sys.exit(EXIT["damaged"])


# -- cp -------------------------------------------------------------------------


@main.command("cp", epilog=SEE_ALSO)
@click.argument("src")
@click.argument("dst")
@click.option(
    "--src-option", "src_options", multiple=True, metavar="KEY=VALUE", help="Storage option for SRC only (repeatable)."
)
@click.option(
    "--dst-option", "dst_options", multiple=True, metavar="KEY=VALUE", help="Storage option for DST only (repeatable)."
)
@_option
@click.option(
    "--max-concurrency",
    type=click.IntRange(1, 1024),
    default=None,
    help="Requests in flight per side (default 16 on object stores).",
)
@click.option(
    "--buffer-mb",
    type=click.IntRange(1),
    default=128,
    show_default=True,
    help="Most MiB of object data in memory at once.",
)
@_quiet
@_json
@_guard
def cp_cmd(
    src: str,
    dst: str,
    src_options: tuple[str, ...],
    dst_options: tuple[str, ...],
    options: tuple[str, ...],
    max_concurrency: int | None,
    buffer_mb: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Copy a checkpoint, or every committed checkpoint of a managed directory,
    from SRC to DST — across backends (s3:// to gs:// to local disk ...).
    A single checkpoint goes into DST (as DST/<its name>) when DST ends with
    "/" or already is a directory of checkpoints.

    Streams objects with bounded memory, checks every crc32c on the way,
    writes data first and each manifest create-only last, and rebuilds the
    directory's state file at DST (ownership records are not copied). Run it
    again after an interruption: committed checkpoints are skipped and
    objects already at DST are not copied again. A progress bar (bytes,
    rate, ETA) is drawn on a terminal; otherwise progress is logged to
    stderr as plain lines. --option applies to both sides, --src-option and
    --dst-option to one.
    """
    from cloudckpt.tools.copy import copy

    so = storage_options_for(src, options, src_options)
    _open(src, so)
    do = storage_options_for(dst, options, dst_options)
    _open(dst, do)
    progress = _Progress("cp", quiet=quiet)
    try:
        report = copy(
            src,
            dst,
            src_storage_options=so,
            dst_storage_options=do,
            progress=progress,
            max_concurrency=max_concurrency,
            buffer_bytes=buffer_mb << 20,
        )
    finally:
        progress.close()
    if as_json:
        _echo_json(report.to_dict())
        return
    for w in report.warnings:
        _out(f"warning: {w}")
    for u in report.vanished:
        _out(f"warning: {u} was deleted at the source during the copy; not copied")
    for u in report.copied:
        _out(f"committed {u}")
    for u in report.skipped:
        _out(f"already there {u}")
    rate = report.bytes_copied / report.seconds if report.seconds > 0 else 0.0
    line = (
        f"copied {plural(len(report.copied), 'checkpoint')} ({len(report.skipped)} already at the destination): "
        f"{plural(report.objects_copied, 'object')}, {human(report.bytes_copied)} in {report.seconds:.2f} s "
        f"({human(rate)}/s)"
    )
    if report.objects_present:
        line += f"; {plural(report.objects_present, 'object')} ({human(report.bytes_present)}) were already there"
    _out(line)
    if report.state_file:
        _out(f"state file {report.state_file}")


# -- rm -------------------------------------------------------------------------


@main.command("rm", epilog=SEE_ALSO)
@click.argument("checkpoint")
@_option
@click.option("-y", "--yes", is_flag=True, help="Also remove the latest checkpoint of a managed directory.")
@_quiet
@_json
@_guard
def rm_cmd(checkpoint: str, options: tuple[str, ...], yes: bool, quiet: bool, as_json: bool) -> None:
    """Remove CHECKPOINT: uncommit it (delete its manifest: it is invisible at
    once), then delete its data. The directory's state file is updated.

    The latest checkpoint of a managed directory (one with a state file or
    ownership records) is removed only with --yes: a job restarting from the
    directory would silently go back to an older checkpoint. A damaged
    checkpoint can be removed; a directory without manifest cannot (use gc).
    A removal that takes more than a second shows its elapsed time on stderr.
    """
    from cloudckpt.tools.admin import remove_checkpoint

    storage = _storage(checkpoint, options)
    with _ticking("rm", f"removing {storage.url}", quiet=quiet):
        result = remove_checkpoint(storage, storage.parent(), yes=yes)
    if as_json:
        _echo_json(result)
        return
    what = plural(result["objects"], "data object") if result["objects"] is not None else "its data"
    _out(f"removed {result['url']} ({result['status']}): manifest first, then {what}")
    if result["state_file_updated"]:
        _out("state file updated")


# -- gc -------------------------------------------------------------------------


def _parse_age(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise click.BadParameter(f"expected a duration like 30m, 1h, 2d or seconds, got {text!r}") from None


@main.command("gc", epilog=SEE_ALSO)
@click.argument("directory")
@_option
@click.option("-y", "--yes", is_flag=True, help="Delete and abort; without it, only show what would go.")
@click.option(
    "--all",
    "include_active",
    is_flag=True,
    help="Also data a running save may still be writing. Only when no job writes the directory.",
)
@click.option(
    "--min-upload-age",
    default="1h",
    show_default=True,
    metavar="AGE",
    help="Abort incomplete uploads only if older than AGE (30m, 1h, 2d, seconds).",
)
@_quiet
@_json
@_guard
def gc_cmd(
    directory: str,
    options: tuple[str, ...],
    yes: bool,
    include_active: bool,
    min_upload_age: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Show garbage under DIRECTORY, and remove it with --yes: orphaned data of
    crashed saves, fenced checkpoints, and on S3 incomplete multipart uploads
    left by killed saves (billed, and invisible to a plain listing).

    Without --yes nothing is changed (a dry run). Safe beside a running job:
    data that a save still running may own (no manifest yet, written under
    the current owner's epoch or by an unmanaged writer; uploads younger than
    --min-upload-age; on local disk, temp files younger than 60 s, which a
    write in flight renames within milliseconds) is shown but kept unless
    --all. Committed checkpoints are never removed, except fenced ones
    (committed by a writer that had lost the directory, which no reader
    lists). With --yes, a progress bar (items removed) is drawn on a
    terminal; otherwise plain lines on stderr.
    """
    from cloudckpt.tools.admin import collect_garbage, find_garbage

    storage = _storage(directory, options)
    items = find_garbage(storage, include_active=include_active, min_upload_age=_parse_age(min_upload_age))
    if not items and storage.list_dir() == ({}, []):
        raise CheckpointNotFoundError(
            f"no checkpoints at {storage.url}: it holds nothing (no <name>-<N> entry, no state file, "
            "no incomplete upload); check the path"
        )
    removed = []
    if yes:
        todo = [g for g in items if g.collect]
        progress = _Progress("gc", len(todo), unit="item", quiet=quiet or not todo)
        try:
            for g in todo:
                removed.extend(collect_garbage(storage, [g]))
                progress.advance()
        finally:
            progress.close()
    if as_json:
        _echo_json(
            {
                "directory": storage.url,
                "dry_run": not yes,
                "items": [g.to_dict() for g in items],
                "removed": [g.url for g in removed],
            }
        )
        return
    if not items:
        _out(f"no garbage under {storage.url}")
        return
    rows = []
    for g in items:
        action = ("abort" if g.upload else "delete") if g.collect else "keep (--all)"
        if yes and g.collect:
            action = "aborted" if g.upload else "deleted"
        rows.append([g.kind, human(g.bytes), action, g.url, g.reason])
    _out(_table(rows, ["KIND", "BYTES", "ACTION", "URL", "WHY"]))
    todo = [g for g in items if g.collect]
    total = human(sum(g.bytes or 0 for g in todo))
    if yes:
        _out(f"removed {plural(len(removed), 'item')}, {total}")
    else:
        _out(
            f"dry run: {plural(len(todo), 'item')}, {total} would be removed; run again with --yes to remove them"
        )


# -- demo -----------------------------------------------------------------------


def _help(option: str) -> str:
    text = _demo.HELP[option]
    return text[0].upper() + text[1:] + "."



@main.command("demo", epilog=SEE_ALSO)
@click.option(
    "--dir",
    "directory",
    default=None,
    metavar="URL",
    help=_help("dir"),
)
@click.option("--steps", type=click.IntRange(1), default=_demo.DEFAULT_STEPS, show_default=True, help=_help("steps"))
@click.option("--every", type=click.IntRange(1), default=_demo.DEFAULT_EVERY, show_default=True, help=_help("every"))
@click.option(
    "--kill-at", default=_demo.DEFAULT_KILL_AT, show_default=True, metavar="STEP", type=int, help=_help("kill_at")
)
@click.option(
    "--delay",
    type=click.FloatRange(0.0),
    default=_demo.DEFAULT_DELAY,
    show_default=True,
    metavar="SECONDS",
    help=_help("delay"),
)
@_guard
def demo_cmd(directory: str | None, steps: int, every: int, kill_at: int, delay: float) -> None:
    """Train a small model under a CheckpointManager, kill it mid-run, resume in
    a new process, and check that the result equals an uninterrupted run
    bit for bit: the README's main job, on local disk, no cloud account needed.

    Exits 0 when the resumed run equals the uninterrupted one, 1 otherwise.
    """
    status = _demo.run(directory, steps=steps, every=every, kill_at=kill_at, delay=delay)
    sys.exit(int(status or 0))


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="cloudckpt")
