"""``cloudckpt ls`` (the checkpoints of a directory) and ``cloudckpt inspect`` (what one checkpoint holds).

Example:
    >>> from click.testing import CliRunner
    >>> import numpy as np, cloudckpt
    >>> _ = cloudckpt.save("memory://doc-cli-inspect/ckpt-1", {"w": np.ones(2)})
    >>> result = CliRunner().invoke(inspect_cmd, ["memory://doc-cli-inspect/ckpt-1"])
    >>> result.exit_code, "w" in result.output
    (0, True)
"""

from __future__ import annotations

import json
from typing import Any

import click

from cloudckpt.api import CheckpointInfo, info
from cloudckpt.errors import CheckpointNotFoundError
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.tools.admin import Listing, list_directory
from cloudckpt.tools.cli.exits import EXIT, fail, guard
from cloudckpt.tools.cli.flags import SEE_ALSO, json_flag, storage_option
from cloudckpt.tools.cli.output import echo_json, err, human, out, plural, table, utc_time
from cloudckpt.tools.cli.storage_options import open_checked, open_with, storage_options_for

__all__ = ["ls_cmd", "inspect_cmd"]


@click.command("ls", epilog=SEE_ALSO)
@click.argument("directory")
@storage_option
@json_flag
@guard
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
    storage = open_with(directory, options)
    if storage.exists(MANIFEST_KEY):
        fail(EXIT["usage"], f"{storage.url} is a checkpoint, not a directory of checkpoints: use `cloudckpt inspect`")
    listing = list_directory(storage)
    if as_json:
        echo_json(listing.to_dict())
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
            [e.name, number, utc_time(e.created), human(e.size), e.state, "*" if e.latest else "", ", ".join(flags)]
        )
    out(table(rows, ["NAME", "NUMBER", "CREATED (UTC)", "SIZE", "STATE", "LATEST", "NOTES"]))
    out(_ls_summary(listing))


def _ls_summary(listing: Listing) -> str:
    """The last line of ``ls``: how many checkpoints, the latest, the unmanaged ones."""
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
    return summary


@click.command("inspect", epilog=SEE_ALSO)
@click.argument("checkpoint")
@storage_option
@json_flag
@guard
def inspect_cmd(checkpoint: str, options: tuple[str, ...], as_json: bool) -> None:
    """Show what CHECKPOINT holds: tree paths, dtypes, shapes, bytes, and the
    URL of its zarr v3 group (readable with zarr-python alone).

    Given a directory of checkpoints, inspects its latest checkpoint.
    """
    from cloudckpt.manager.checkpoint_manager import latest_checkpoint

    opts = storage_options_for(checkpoint, options)
    storage = open_checked(checkpoint, opts)
    if not storage.exists(MANIFEST_KEY):
        latest = latest_checkpoint(checkpoint, opts)
        if latest is None:
            raise CheckpointNotFoundError(
                f"no checkpoint at {storage.url}: {storage.url_for(MANIFEST_KEY)} does not exist, "
                f"and it is not a directory with committed <name>-<N> checkpoints{_unmanaged_hint(storage)}"
            )
        err(f"{storage.url} is a directory; inspecting its latest checkpoint {latest}")
        storage = open_checked(latest, opts)
    i = info(storage.url, storage_options=opts)
    if as_json:
        echo_json(_inspect_data(i))
        return
    out(_inspect_head(i))
    out("")
    out(_inspect_table(i.entries))


def _inspect_data(i: CheckpointInfo) -> dict[str, Any]:
    """What ``inspect --json`` prints."""
    return {
        "url": i.url,
        "zarr_group": i.data_url,
        "format_version": i.format_version,
        "checkpoint_number": i.checkpoint_number,
        "created": i.created,
        "created_utc": i.created_utc,
        "writer": i.writer,
        "nbytes": i.nbytes,
        "stored_bytes": i.stored_bytes,
        "objects": i.objects,
        "metadata": i.metadata,
        "leaves": i.entries,
    }


def _inspect_head(i: CheckpointInfo) -> str:
    """The head of ``inspect``: one ``name  value`` line per fact."""
    head = [
        ("checkpoint", i.url),
        ("zarr group", i.data_url),
        ("format version", str(i.format_version)),
        ("number", str(i.checkpoint_number)),
        ("created (UTC)", utc_time(i.created)),
        ("writer", f"{i.writer.get('library', '?')}, epoch {i.writer.get('epoch')}"),
        ("tensor bytes", f"{human(i.nbytes)} in {plural(len(i.leaves), 'array')}"),
        ("stored", f"{human(i.stored_bytes)} in {plural(i.objects, 'object')} (manifest included)"),
    ]
    if i.metadata:
        head.append(("metadata", json.dumps(i.metadata, sort_keys=True)))
    width = max(len(k) for k, _ in head)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in head)


def _inspect_table(entries: list[dict[str, Any]]) -> str:
    """The leaves of ``inspect``: one row per leaf of the tree."""
    rows = []
    for r in entries:
        path = "/".join(str(p) for p in r["path"]) or "<root>"
        if "rank" in r:
            path += f" [rank {r['rank']}]"
        if r["kind"] == "json":
            rows.append([path, r["type"], "-", "-", f"json: {json.dumps(r['value'], default=str)[:60]}"])
        elif r["kind"] == "alias":
            of = "/".join(str(p) for p in r["of"]) or "<root>"
            rows.append([path, "-", "-", "-", f"same tensor as {of} (tied)"])
        else:
            where = f"{r['stored_as']} {r['zarr_path']}"
            rows.append([path, r["dtype"], str(tuple(r["shape"])), human(r["nbytes"]), where])
    return table(rows, ["PATH", "DTYPE", "SHAPE", "BYTES", "STORED AS"])


def _unmanaged_hint(storage: Any) -> str:
    """``; it holds unmanaged checkpoints: URL/c4, ...`` when it does, else ``""``."""
    try:
        listing = list_directory(storage)
    except CheckpointNotFoundError:
        return ""
    names = [e.url for e in listing.entries if e.unmanaged and e.state == "committed"]
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"; it holds {plural(len(names), 'unmanaged checkpoint')} (not named <name>-<N>): inspect one of {shown}"
