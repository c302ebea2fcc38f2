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

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click

from . import __about__
from .errors import (
    CheckpointError,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    FormatVersionError,
    ObjectNotFoundError,
    OwnershipLostError,
    StorageError,
)

__all__ = ["main", "parse_option", "env_storage_options", "storage_options_for", "EXIT"]

log = logging.getLogger("cloudckpt")

#: exit statuses, documented in the epilog of every command and docs/cli.md
EXIT = {
    "ok": 0,
    "damaged": 1,
    "usage": 2,
    "not_found": 3,
    "storage": 4,
    "refused": 5,
}

EPILOG = """\b
Exit statuses:
  0  success (verify: nothing damaged)
  1  damage found: verify found a damaged object or manifest, or a
     copy/inspect met a corrupt checkpoint
  2  usage error: bad arguments or --option, unknown URL scheme
  3  not found: no checkpoint (or no directory of checkpoints) there
  4  storage error: permission denied, bad credentials, unreachable
     endpoint, missing backend package, other I/O failure
  5  refused: the destination holds a different committed checkpoint,
     `rm` of the latest checkpoint without --yes, a checkpoint written
     by a newer cloudckpt, a directory owned by another manager
\b
Storage options: the backends read their own environment variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
AWS_ENDPOINT_URL, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...);
STORAGE_EMULATOR_HOST points gs:// URLs at an emulator (anonymous).
--option KEY=VALUE adds or overrides one (VALUE is JSON if it parses).
Credentials are never printed."""

_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)
_SECRET_WORDS = (
    "secret",
    "token",
    "password",
    "passwd",
    "key",
    "credential",
    "sas",
    "signature",
    "session",
    "connection",
)

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

    Example:
        >>> storage_options_for("memory://x", ["a=1"], ["a=2", "b=x"])
        {'a': 2, 'b': 'x'}
    """
    opts = env_storage_options(url)
    for options in option_lists:
        for text in options:
            k, v = parse_option(text)
            opts[k] = v
    _remember_secrets(opts)
    return opts or None


# -- redaction ------------------------------------------------------------------

_secrets: set[str] = set()


def _remember_secrets(options: Mapping[str, Any]) -> None:
    def walk(x: Any, sensitive: bool) -> None:
        if isinstance(x, Mapping):
            for k, v in x.items():
                walk(v, sensitive or any(w in str(k).lower() for w in _SECRET_WORDS))
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v, sensitive)
        elif sensitive and isinstance(x, (str, int)) and len(str(x)) >= 4:
            _secrets.add(str(x))

    walk(options, False)


def _env_secrets() -> None:
    for name in _SECRET_ENV:
        v = os.environ.get(name)
        if v and len(v) >= 4:
            _secrets.add(v)


def redact(text: str) -> str:
    """``text`` with every known credential replaced by ``***``.

    Example:
        >>> _secrets.add("hunter22"); redact("secret is hunter22")
        'secret is ***'
    """
    for s in sorted(_secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


class _EchoHandler(logging.Handler):
    """Log records to the current stderr (click's, under a test runner), credentials redacted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(redact(self.format(record)), err=True)
        except Exception:  # pragma: no cover - never let logging break a command
            self.handleError(record)


# -- errors ---------------------------------------------------------------------


def _classify(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, CorruptCheckpointError):
        return EXIT["damaged"], str(exc)
    if isinstance(exc, (CheckpointNotFoundError, ObjectNotFoundError)):
        return EXIT["not_found"], str(exc)
    if isinstance(exc, (CheckpointExistsError, OwnershipLostError, FormatVersionError)):
        return EXIT["refused"], str(exc)
    from .admin import RefusedError

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
    if isinstance(exc, OSError):
        return EXIT["storage"], f"{type(exc).__name__}: {exc}"
    return EXIT["storage"], f"unexpected {type(exc).__name__}: {exc}"


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"cloudckpt: error: {redact(message)}", err=True)
    sys.exit(code)


def _guard(fn: F) -> F:
    """Turn exceptions into a one-line message (credentials redacted) and an exit status."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _env_secrets()
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


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__about__.__version__, prog_name="cloudckpt")
@click.option("-v", "--verbose", count=True, help="Log what cloudckpt does to stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Inspect, verify, copy and clean up cloudckpt checkpoints on any fsspec URL
    (local paths, s3://, gs://, memory://, ...)."""
    if verbose:
        handler = _EchoHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        lg = logging.getLogger("cloudckpt")
        level = lg.level
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)

        def restore() -> None:
            lg.removeHandler(handler)
            lg.setLevel(level)

        click.get_current_context().call_on_close(restore)


def _storage(url: str, options: Sequence[str]) -> Any:
    from .storage import open_storage

    return open_storage(url, storage_options_for(url, options))


# -- ls -------------------------------------------------------------------------


@main.command("ls", epilog=EPILOG)
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
    manager restores. Run `cloudckpt gc DIRECTORY` to collect garbage.
    """
    from .admin import list_directory
    from .manifest import MANIFEST_KEY

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
        if e.preserved:
            flags.append("preserved")
        if e.orphaned:
            flags.append(f"+{len(e.orphaned)} orphaned data ({human(e.orphaned_bytes)})")
        rows.append(
            [e.name, str(e.number), _time(e.created), human(e.size), e.state, "*" if e.latest else "", ", ".join(flags)]
        )
    _out(_table(rows, ["NAME", "NUMBER", "CREATED (UTC)", "SIZE", "STATE", "LATEST", "NOTES"]))
    committed = sum(1 for e in listing.entries if e.state == "committed")
    summary = f"{committed} committed checkpoint(s) in {listing.url}; latest: {listing.latest or 'none'}"
    if listing.has_state_file and listing.state_file is None:
        summary += "; state file does not parse (a manager rebuilds it)"
    _out(summary)


# -- inspect --------------------------------------------------------------------


def _tree_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    from .checkpoint_io import describe_leaves
    from .tree import unflatten

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


@main.command("inspect", epilog=EPILOG)
@click.argument("checkpoint")
@_option
@_json
@_guard
def inspect_cmd(checkpoint: str, options: tuple[str, ...], as_json: bool) -> None:
    """Show what CHECKPOINT holds: tree paths, dtypes, shapes, bytes, and the
    URL of its zarr v3 group (readable with zarr-python alone).

    Given a directory of checkpoints, inspects its latest checkpoint.
    """
    from .checkpoint_io import read_manifest
    from .manager import latest_checkpoint
    from .manifest import MANIFEST_KEY

    opts = storage_options_for(checkpoint, options)
    from .storage import open_storage

    storage = open_storage(checkpoint, opts)
    if not storage.exists(MANIFEST_KEY):
        latest = latest_checkpoint(checkpoint, opts)
        if latest is None:
            raise CheckpointNotFoundError(
                f"no checkpoint at {storage.url}: {storage.url_for(MANIFEST_KEY)} does not exist, "
                "and it is not a directory with committed checkpoints"
            )
        click.echo(f"{storage.url} is a directory; inspecting its latest checkpoint {latest}", err=True)
        storage = open_storage(latest, opts)
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
        ("tensor bytes", f"{human(m['nbytes'])} in {len(m['arrays'])} arrays"),
        ("stored", f"{human(stored)} in {len(m['objects']) + 1} objects (manifest included)"),
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


# -- verify ---------------------------------------------------------------------


@main.command("verify", epilog=EPILOG)
@click.argument("path")
@_option
@_json
@click.option("--strict", is_flag=True, help="Also fail (exit 1) on warnings, e.g. a stale state file.")
@_guard
def verify_cmd(path: str, options: tuple[str, ...], as_json: bool, strict: bool) -> None:
    """Re-read every object of a checkpoint, or of every checkpoint of a
    directory, and check sizes and crc32c checksums against the manifests.

    Exits 1 and names every damaged object when anything is wrong. For a
    directory, also checks the state file against the manifests (a mismatch
    is a warning: managers rebuild it).
    """
    from .verify import verify

    report = verify(path, storage_options=storage_options_for(path, options))
    failed = not report.ok or (strict and bool(report.warnings))
    if as_json:
        _echo_json(report.to_dict())
    else:
        for c in report.checkpoints:
            status = {"ok": "ok", "damaged": "DAMAGED", "skipped": "skipped"}[c.status]
            _out(f"{status:8} {c.url}  ({c.objects} objects, {human(c.bytes)})")
            for d in c.damaged:
                _out(f"  damaged: {d.url}: {d.problem}")
        for w in report.warnings:
            _out(f"warning: {w}")
        n_bad = len(report.damaged)
        if not report.ok:
            bad_ckpts = sum(1 for c in report.checkpoints if not c.ok)
            _out(f"FAILED: {n_bad} damaged object(s) in {bad_ckpts} of {len(report.checkpoints)} checkpoint(s)")
        else:
            _out(
                f"OK: {len(report.checkpoints)} checkpoint(s), {report.objects_checked} objects, "
                f"{human(report.bytes_checked)} verified in {report.seconds:.2f} s"
                + (f", {len(report.warnings)} warning(s)" if report.warnings else "")
            )
    if failed:
        sys.exit(EXIT["damaged"])


# -- cp -------------------------------------------------------------------------


def _terminal_size() -> tuple[int, int]:
    """(columns, rows) of the terminal on stderr; 80x24 where it reports 0 (a pty
    created without a size), in which tqdm would otherwise draw nothing."""
    try:
        cols, rows = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        cols, rows = 0, 0
    return (cols if cols > 0 else 80), (rows if rows > 0 else 24)


class _PlainProgress:
    """Progress as log lines (no terminal): at most one line per ``interval`` seconds."""

    def __init__(self, interval: float = 2.0) -> None:
        self.t0 = time.monotonic()
        self.last = -1e9
        self.interval = interval

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total == 0 or (0 < done < total and now - self.last < self.interval):
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = done / elapsed
        pct = 100.0 * done / total if total else 100.0
        eta = (total - done) / rate if rate > 0 and done < total else 0.0
        click.echo(
            f"cp: {human(done)} of {human(total)} ({pct:.0f}%), {human(rate)}/s, ETA {int(eta) // 60}:{int(eta) % 60:02d}",
            err=True,
        )


@main.command("cp", epilog=EPILOG)
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
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
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
    from .copy import copy

    so = storage_options_for(src, options, src_options)
    do = storage_options_for(dst, options, dst_options)
    bar: Any = None
    progress: Callable[[int, int], None] | None = None
    if not quiet:
        if sys.stderr.isatty():
            from tqdm import tqdm

            def progress(done: int, total: int) -> None:
                nonlocal bar
                if bar is None:
                    cols, rows = _terminal_size()
                    bar = tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc="cp",
                        file=sys.stderr,
                        ncols=cols,
                        nrows=rows,
                    )
                bar.update(done - bar.n)

        else:
            progress = _PlainProgress()
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
        if bar is not None:
            bar.close()
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
        f"copied {len(report.copied)} checkpoint(s) ({len(report.skipped)} already at the destination): "
        f"{report.objects_copied} objects, {human(report.bytes_copied)} in {report.seconds:.2f} s ({human(rate)}/s)"
    )
    if report.objects_present:
        line += f"; {report.objects_present} objects ({human(report.bytes_present)}) were already there"
    _out(line)
    if report.state_file:
        _out(f"state file {report.state_file}")


# -- rm -------------------------------------------------------------------------


@main.command("rm", epilog=EPILOG)
@click.argument("checkpoint")
@_option
@click.option("-y", "--yes", is_flag=True, help="Also remove the latest checkpoint of a managed directory.")
@_json
@_guard
def rm_cmd(checkpoint: str, options: tuple[str, ...], yes: bool, as_json: bool) -> None:
    """Remove CHECKPOINT: uncommit it (delete its manifest: it is invisible at
    once), then delete its data. The directory's state file is updated.

    The latest checkpoint of a managed directory (one with a state file or
    ownership records) is removed only with --yes: a job restarting from the
    directory would silently go back to an older checkpoint. A damaged
    checkpoint can be removed; a directory without manifest cannot (use gc).
    """
    from .admin import remove_checkpoint

    storage = _storage(checkpoint, options)
    result = remove_checkpoint(storage, storage.parent(), yes=yes)
    if as_json:
        _echo_json(result)
        return
    what = f"{result['objects']} data objects" if result["objects"] is not None else "its data"
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


@main.command("gc", epilog=EPILOG)
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
@_json
@_guard
def gc_cmd(
    directory: str, options: tuple[str, ...], yes: bool, include_active: bool, min_upload_age: str, as_json: bool
) -> None:
    """Show garbage under DIRECTORY, and remove it with --yes: orphaned data of
    crashed saves, fenced checkpoints, and on S3 incomplete multipart uploads
    left by killed saves (billed, and invisible to a plain listing).

    Without --yes nothing is changed (a dry run). Data that a save still
    running may own (no manifest yet, written under the current owner's
    epoch or by an unmanaged writer; uploads younger than --min-upload-age)
    is shown but kept unless --all.
    """
    from .admin import collect_garbage, find_garbage

    storage = _storage(directory, options)
    items = find_garbage(storage, include_active=include_active, min_upload_age=_parse_age(min_upload_age))
    removed = collect_garbage(storage, items) if yes else []
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
        _out(f"removed {len(removed)} item(s), {total}")
    else:
        _out(f"dry run: {len(todo)} item(s), {total} would be removed; run again with --yes to remove them")


# -- demo -----------------------------------------------------------------------


@main.command(
    "demo",
    epilog=EPILOG,
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_guard
def demo_cmd(args: tuple[str, ...]) -> None:
    """Train a small model, kill it mid-run, resume: the README's main job.
    Options go to the demo (`cloudckpt demo --help` lists them)."""
    from . import demo

    status = demo.main(list(args))
    sys.exit(int(status or 0))


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="cloudckpt")
