"""``cloudckpt rm`` (remove one checkpoint: uncommit, then delete) and ``cloudckpt gc`` (collect garbage of a directory).

Example:
    >>> from click.testing import CliRunner
    >>> import numpy as np, cloudckpt
    >>> _ = cloudckpt.save("memory://doc-cli-rm/c", {"w": np.ones(2)})
    >>> result = CliRunner().invoke(rm_cmd, ["memory://doc-cli-rm/c", "-q"])
    >>> result.exit_code, result.output.split("): ")[0]
    (0, 'removed memory://doc-cli-rm/c (committed')
"""

from __future__ import annotations

from typing import Any

import click

from cloudckpt.errors import CheckpointNotFoundError
from cloudckpt.tools.admin import Garbage, collect_garbage, find_garbage, remove_checkpoint
from cloudckpt.tools.cli.exits import guard
from cloudckpt.tools.cli.flags import SEE_ALSO, json_flag, quiet_flag, storage_option
from cloudckpt.tools.cli.output import echo_json, human, out, plural, table
from cloudckpt.tools.cli.progress import Progress, ticking
from cloudckpt.tools.cli.storage_options import open_with

__all__ = ["rm_cmd", "gc_cmd", "parse_age"]


@click.command("rm", epilog=SEE_ALSO)
@click.argument("checkpoint")
@storage_option
@click.option("-y", "--yes", is_flag=True, help="Also remove the latest checkpoint of a managed directory.")
@quiet_flag
@json_flag
@guard
def rm_cmd(checkpoint: str, options: tuple[str, ...], yes: bool, quiet: bool, as_json: bool) -> None:
    """Remove CHECKPOINT: uncommit it (delete its manifest: it is invisible at
    once), then delete its data. The directory's state file is updated.

    The latest checkpoint of a managed directory (one with a state file or
    ownership records) is removed only with --yes: a job restarting from the
    directory would silently go back to an older checkpoint. A damaged
    checkpoint can be removed; a directory without manifest cannot (use gc).
    A removal that takes more than a second shows its elapsed time on stderr.
    """
    storage = open_with(checkpoint, options)
    with ticking("rm", f"removing {storage.url}", quiet=quiet):
        result = remove_checkpoint(storage, storage.parent(), yes=yes)
    if as_json:
        echo_json(result)
        return
    what = plural(result["objects"], "data object") if result["objects"] is not None else "its data"
    out(f"removed {result['url']} ({result['status']}): manifest first, then {what}")
    if result["state_file_updated"]:
        out("state file updated")


def parse_age(text: str) -> float:
    """A duration in seconds from ``30m``, ``1h``, ``2d`` or plain seconds.

    Example:
        >>> parse_age("30m"), parse_age("2d"), parse_age("90")
        (1800.0, 172800.0, 90.0)
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise click.BadParameter(f"expected a duration like 30m, 1h, 2d or seconds, got {text!r}") from None


@click.command("gc", epilog=SEE_ALSO)
@click.argument("directory")
@storage_option
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
@quiet_flag
@json_flag
@guard
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
    storage = open_with(directory, options)
    items = find_garbage(storage, include_active=include_active, min_upload_age=parse_age(min_upload_age))
    if not items and storage.list_dir() == ({}, []):
        raise CheckpointNotFoundError(
            f"no checkpoints at {storage.url}: it holds nothing (no <name>-<N> entry, no state file, "
            "no incomplete upload); check the path"
        )
    removed = _collect(storage, [g for g in items if g.collect], quiet=quiet) if yes else []
    if as_json:
        echo_json(
            {
                "directory": storage.url,
                "dry_run": not yes,
                "items": [g.to_dict() for g in items],
                "removed": [g.url for g in removed],
            }
        )
    elif not items:
        out(f"no garbage under {storage.url}")
    else:
        _print_garbage(items, removed, yes=yes)


def _collect(storage: Any, todo: list[Garbage], *, quiet: bool) -> list[Garbage]:
    """Remove ``todo``, one item at a time, counting them on the progress bar."""
    removed: list[Garbage] = []
    progress = Progress("gc", len(todo), unit="item", quiet=quiet or not todo)
    try:
        for g in todo:
            removed.extend(collect_garbage(storage, [g]))
            progress.advance()
    finally:
        progress.close()
    return removed


def _print_garbage(items: list[Garbage], removed: list[Garbage], *, yes: bool) -> None:
    """The garbage as a table (what, how big, what is done with it, why) and the total."""
    rows = []
    for g in items:
        action = ("abort" if g.upload else "delete") if g.collect else "keep (--all)"
        if yes and g.collect:
            action = "aborted" if g.upload else "deleted"
        rows.append([g.kind, human(g.bytes), action, g.url, g.reason])
    out(table(rows, ["KIND", "BYTES", "ACTION", "URL", "WHY"]))
    todo = [g for g in items if g.collect]
    total = human(sum(g.bytes or 0 for g in todo))
    if yes:
        out(f"removed {plural(len(removed), 'item')}, {total}")
    else:
        out(f"dry run: {plural(len(todo), 'item')}, {total} would be removed; run again with --yes to remove them")
