"""The flags several commands share (``-o``, ``--json``, ``-q``) and the epilog that points to ``cloudckpt --help``.

Example:
    >>> import click
    >>> @click.command()
    ... @storage_option
    ... @json_flag
    ... def show(options, as_json):
    ...     click.echo(f"{options} {as_json}")
    >>> from click.testing import CliRunner
    >>> CliRunner().invoke(show, ["-o", "anon=true", "--json"]).output
    "('anon=true',) True\\n"
"""

from __future__ import annotations

import click

__all__ = ["SEE_ALSO", "storage_option", "json_flag", "quiet_flag"]

#: the epilog of every subcommand: where the shared paragraphs are
SEE_ALSO = "Exit statuses, storage options (-o, environment variables) and credentials: see `cloudckpt --help`."

#: ``-o/--option KEY=VALUE`` (repeatable), as ``options``
storage_option = click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Storage option for the backend (repeatable); VALUE is JSON if it parses, else a string.",
)
#: ``--json``, as ``as_json``
json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
#: ``-q/--quiet``, as ``quiet``
quiet_flag = click.option("-q", "--quiet", is_flag=True, help="No progress output on stderr.")
