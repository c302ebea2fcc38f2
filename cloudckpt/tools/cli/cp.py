"""``cloudckpt cp``: copy a checkpoint, or every committed checkpoint of a directory, between any two URLs.

Example:
    >>> from click.testing import CliRunner
    >>> import numpy as np, cloudckpt
    >>> _ = cloudckpt.save("memory://doc-cli-cp/a/ckpt-1", {"w": np.ones(2)})
    >>> result = CliRunner().invoke(cp_cmd, ["memory://doc-cli-cp/a/ckpt-1", "memory://doc-cli-cp/b/ckpt-1", "-q"])
    >>> result.exit_code, result.output.splitlines()[0]
    (0, 'committed memory://doc-cli-cp/b/ckpt-1')
"""

from __future__ import annotations

import click

from cloudckpt.tools.cli.exits import guard
from cloudckpt.tools.cli.flags import SEE_ALSO, json_flag, quiet_flag, storage_option
from cloudckpt.tools.cli.output import echo_json, human, out, plural
from cloudckpt.tools.cli.progress import Progress
from cloudckpt.tools.cli.storage_options import open_checked, storage_options_for
from cloudckpt.tools.copy import CopyReport, copy

__all__ = ["cp_cmd"]


@click.command("cp", epilog=SEE_ALSO)
@click.argument("src")
@click.argument("dst")
@click.option(
    "--src-option", "src_options", multiple=True, metavar="KEY=VALUE", help="Storage option for SRC only (repeatable)."
)
@click.option(
    "--dst-option", "dst_options", multiple=True, metavar="KEY=VALUE", help="Storage option for DST only (repeatable)."
)
@storage_option
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
@quiet_flag
@json_flag
@guard
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
    objects already at DST are not copied again. Only what DST lacks is
    sent: an object that a checkpoint already committed at DST holds (same
    content hash; the one copied just before, or the newest one there) is
    copied inside DST's store and checked, so syncing a run's checkpoints
    sends a frozen base model once. A progress bar (bytes,
    rate, ETA) is drawn on a terminal; otherwise progress is logged to
    stderr as plain lines. --option applies to both sides, --src-option and
    --dst-option to one.
    """
    so = storage_options_for(src, options, src_options)
    open_checked(src, so)
    do = storage_options_for(dst, options, dst_options)
    open_checked(dst, do)
    progress = Progress("cp", quiet=quiet)
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
        echo_json(report.to_dict())
    else:
        _print_report(report)


def _print_report(report: CopyReport) -> None:
    """What was copied, what was already there, the totals and the state file.

    Example:
        >>> r = CopyReport("memory://a", "memory://b", "directory", objects_copied=3, bytes_copied=2048,
        ...                objects_deduplicated=2, bytes_deduplicated=1 << 30, seconds=1.0)
        >>> _print_report(r)
        copied 0 checkpoints (0 already at the destination): 3 objects, 2.0 KiB in 1.00 s (2.0 KiB/s); 2 objects (1.0 GiB) copied inside the destination, not sent
    """
    for w in report.warnings:
        out(f"warning: {w}")
    for u in report.vanished:
        out(f"warning: {u} was deleted at the source during the copy; not copied")
    for u in report.copied:
        out(f"committed {u}")
    for u in report.skipped:
        out(f"already there {u}")
    rate = report.bytes_copied / report.seconds if report.seconds > 0 else 0.0
    line = (
        f"copied {plural(len(report.copied), 'checkpoint')} ({len(report.skipped)} already at the destination): "
        f"{plural(report.objects_copied, 'object')}, {human(report.bytes_copied)} in {report.seconds:.2f} s "
        f"({human(rate)}/s)"
    )
    if report.objects_deduplicated:
        line += (
            f"; {plural(report.objects_deduplicated, 'object')} ({human(report.bytes_deduplicated)}) "
            "copied inside the destination, not sent"
        )
    if report.objects_present:
        line += f"; {plural(report.objects_present, 'object')} ({human(report.bytes_present)}) were already there"
    out(line)
    if report.state_file:
        out(f"state file {report.state_file}")
