"""``cloudckpt export`` and ``cloudckpt import``: a checkpoint's tensors to and from Hugging Face safetensors.

Example:
    >>> from click.testing import CliRunner
    >>> import numpy as np, cloudckpt
    >>> _ = cloudckpt.save("memory://doc-cli-st/ckpt-1", {"model": {"w": np.ones(2, "f4")}, "step": 3})
    >>> r = CliRunner().invoke(export_cmd, ["memory://doc-cli-st/ckpt-1", "memory://doc-cli-st/hf", "--prefix", "model", "-q"])
    >>> r.exit_code, r.output.splitlines()[0]
    (0, 'wrote memory://doc-cli-st/hf/model.safetensors')
    >>> r = CliRunner().invoke(import_cmd, ["memory://doc-cli-st/hf", "memory://doc-cli-st/ckpt-2", "--prefix", "model", "-q"])
    >>> r.exit_code, r.output.splitlines()[0]
    (0, 'committed memory://doc-cli-st/ckpt-2')
"""

from __future__ import annotations

import click

from cloudckpt.tools.cli.exits import guard
from cloudckpt.tools.cli.flags import SEE_ALSO, json_flag, quiet_flag, storage_option
from cloudckpt.tools.cli.output import echo_json, human, out, plural
from cloudckpt.tools.cli.progress import Progress
from cloudckpt.tools.cli.storage_options import open_checked, storage_options_for
from cloudckpt.tools.safetensors_io import DEFAULT_MAX_SHARD, export_safetensors, import_safetensors
from cloudckpt.tools.safetensors_io.common import open_file

__all__ = ["export_cmd", "import_cmd"]

_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["safetensors"]),
    default="safetensors",
    show_default=True,
    help="The file format (safetensors, as Hugging Face writes it).",
)
_SRC = click.option(
    "--src-option", "src_options", multiple=True, metavar="KEY=VALUE", help="Storage option for the source only (repeatable)."
)
_DST = click.option(
    "--dst-option", "dst_options", multiple=True, metavar="KEY=VALUE", help="Storage option for the destination only (repeatable)."
)


def _open(url: str, options: tuple[str, ...], side: tuple[str, ...], *, file: bool = False) -> dict[str, object] | None:
    """The storage options of ``url`` (environment, -o, the side's own), checked against its backend."""
    so = storage_options_for(url, options, side)
    if file:
        open_checked(open_file(url, so)[0].url, so)
    else:
        open_checked(url, so)
    return so


@click.command("export", epilog=SEE_ALSO)
@click.argument("ckpt")
@click.argument("dest")
@_FORMAT
@click.option("--prefix", default=None, metavar="KEY[/KEY...]", help="Export only the tensors under this key (e.g. model); it is removed from their names.")
@click.option("--max-shard-size", default="5GB", show_default=True, metavar="SIZE", help="Largest file (bytes, or 500MB, 5GB, 2GiB ...).")
@click.option("--name", default="model", show_default=True, metavar="NAME", help="File name stem: NAME.safetensors or NAME-00001-of-0000N.safetensors.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export at DEST (its stale shards are deleted).")
@_SRC
@_DST
@storage_option
@quiet_flag
@json_flag
@guard
def export_cmd(
    ckpt: str,
    dest: str,
    fmt: str,
    prefix: str | None,
    max_shard_size: str,
    name: str,
    overwrite: bool,
    src_options: tuple[str, ...],
    dst_options: tuple[str, ...],
    options: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Write the tensors of the checkpoint CKPT as Hugging Face safetensors in DEST
    (a directory, or one file if DEST ends with .safetensors) — any URL to any URL.

    Names are the checkpoint's keys joined with "." (the --prefix removed);
    files of at most --max-shard-size with a model.safetensors.index.json, or
    one model.safetensors, as transformers' save_pretrained writes them.
    Leaves that are not tensors (ints, strings) are listed and not exported.
    Memory is bounded by the largest file. An earlier export at DEST is
    refused (exit 5) without --overwrite.
    """
    del fmt  # one format today
    so = _open(ckpt, options, src_options)
    do = _open(dest, options, dst_options, file=dest.rstrip("/").endswith(".safetensors"))
    progress = Progress("export", quiet=quiet)
    try:
        report = export_safetensors(
            ckpt, dest, prefix=prefix, max_shard_size=max_shard_size or DEFAULT_MAX_SHARD, name=name,
            storage_options=so, dest_storage_options=do, overwrite=overwrite, progress=progress,
        )  # fmt: skip
    finally:
        progress.close()
    if as_json:
        echo_json(report.to_dict())
        return
    for f in report.files:
        out(f"wrote {f}")
    if report.index:
        out(f"wrote {report.index}")
    for s in report.skipped:
        out(f"note: not a tensor, not exported: {s}")
    rate = report.nbytes / report.seconds if report.seconds > 0 else 0.0
    out(
        f"exported {plural(report.tensors, 'tensor')} ({human(report.nbytes)}) in {plural(len(report.files), 'file')}, "
        f"{report.seconds:.2f} s ({human(rate)}/s)"
    )


@click.command("import", epilog=SEE_ALSO)
@click.argument("src")
@click.argument("ckpt")
@_FORMAT
@click.option("--prefix", default=None, metavar="KEY[/KEY...]", help="Put the tensors under this key (e.g. model).")
@_SRC
@_DST
@storage_option
@quiet_flag
@json_flag
@guard
def import_cmd(
    src: str,
    ckpt: str,
    fmt: str,
    prefix: str | None,
    src_options: tuple[str, ...],
    dst_options: tuple[str, ...],
    options: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Save a safetensors file, or a directory of them (sharded, with or without
    its index), as the cloudckpt checkpoint CKPT — any URL to any URL.

    The state is a flat dict of the tensors' names (dots kept), under
    --prefix if given: `cloudckpt export --prefix` with the same prefix
    gives back the same names and bytes. Headers are checked before any data
    is read; memory is bounded (local files are mapped, remote tensors are
    spooled to the temporary directory). An existing checkpoint at CKPT is
    refused (exit 5).
    """
    del fmt
    is_file = src.rstrip("/").endswith((".safetensors", ".index.json"))
    so = _open(src, options, src_options, file=is_file)
    do = _open(ckpt, options, dst_options)
    progress = Progress("import", quiet=quiet)
    try:
        report = import_safetensors(
            src, ckpt, prefix=prefix, storage_options=so, ckpt_storage_options=do, progress=progress
        )
    finally:
        progress.close()
    if as_json:
        echo_json(report.to_dict())
        return
    out(f"committed {report.url}")
    rate = report.nbytes / report.seconds if report.seconds > 0 else 0.0
    out(
        f"imported {plural(report.tensors, 'tensor')} ({human(report.nbytes)}) from {plural(len(report.files), 'file')}, "
        f"{report.seconds:.2f} s ({human(rate)}/s)"
    )
