"""``cloudckpt verify``: re-read every object of a checkpoint or a directory and check it against the manifests.

Example:
    >>> from click.testing import CliRunner
    >>> import numpy as np, cloudckpt
    >>> _ = cloudckpt.save("memory://doc-cli-verify/ckpt-1", {"w": np.ones(2)})
    >>> result = CliRunner().invoke(verify_cmd, ["memory://doc-cli-verify", "-q"])
    >>> result.exit_code, result.output.startswith("ok ")
    (0, True)
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from cloudckpt.api import info
from cloudckpt.errors import CheckpointError, CheckpointNotFoundError
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.tools.admin import list_directory
from cloudckpt.tools.cli.exits import EXIT, guard
from cloudckpt.tools.cli.flags import SEE_ALSO, json_flag, quiet_flag, storage_option
from cloudckpt.tools.cli.output import echo_json, human, out, plural
from cloudckpt.tools.cli.progress import Progress
from cloudckpt.tools.cli.storage_options import open_checked, storage_options_for
from cloudckpt.tools.verify import CheckpointReport, VerifyReport, verify

__all__ = ["verify_cmd"]


def _verify_all(path: str, opts: dict[str, Any] | None, progress: Progress) -> VerifyReport:
    """Verify the checkpoint at ``path``, or every checkpoint of the directory
    ``path`` — its ``<name>-<N>`` checkpoints and state file
    (:func:`cloudckpt.verify`), then its unmanaged checkpoints — with
    ``progress`` counting the bytes of the objects checked."""
    storage = open_checked(path, opts)

    def tick(nbytes: int) -> None:
        progress.advance(nbytes)

    if storage.exists(MANIFEST_KEY):
        try:
            progress(0, info(storage.url, storage_options=opts).stored_bytes)
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


def _checkpoint_line(c: CheckpointReport) -> str:
    """One checkpoint's verdict: ``ok       URL  (N objects, SIZE)``."""
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


@click.command("verify", epilog=SEE_ALSO)
@click.argument("path")
@storage_option
@json_flag
@click.option("--strict", is_flag=True, help="Also fail (exit 1) on warnings, e.g. a stale state file.")
@quiet_flag
@guard
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
    progress = Progress("verify", quiet=quiet)
    t0 = time.monotonic()
    try:
        report = _verify_all(path, opts, progress)
    finally:
        progress.close()
    report.seconds = time.monotonic() - t0
    failed = not report.ok or (strict and bool(report.warnings))
    if as_json:
        echo_json(report.to_dict())
    else:
        _print_report(report)
    if failed:
        sys.exit(EXIT["damaged"])


def _print_report(report: VerifyReport) -> None:
    """One line per checkpoint, its damaged objects, the warnings, and the verdict."""
    for c in report.checkpoints:
        out(_checkpoint_line(c))
        for d in c.damaged:
            out(f"  damaged: {d.url}: {d.problem}")
    for w in report.warnings:
        out(f"warning: {w}")
    verified = [c for c in report.checkpoints if c.status != "skipped"]
    skipped = len(report.checkpoints) - len(verified)
    tail = (f", {skipped} skipped (newer format)" if skipped else "") + (
        f", {plural(len(report.warnings), 'warning')}" if report.warnings else ""
    )
    if not report.ok:
        bad = sum(1 for c in report.checkpoints if not c.ok)
        out(
            f"FAILED: {plural(len(report.damaged), 'damaged object')} in {bad} of "
            f"{plural(len(report.checkpoints), 'checkpoint')}{tail}"
        )
    elif not verified:
        out(f"OK: nothing damaged, but no checkpoint was verified in {report.url}{tail}")
    else:
        out(
            f"OK: {plural(len(verified), 'checkpoint')} verified ({plural(report.objects_checked, 'object')}, "
            f"{human(report.bytes_checked)} read and checked) in {report.seconds:.2f} s{tail}"
        )
