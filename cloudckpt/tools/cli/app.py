"""The ``cloudckpt`` command: list, inspect, verify, copy, remove and clean checkpoints on any URL.

Run ``cloudckpt --help`` or ``cloudckpt COMMAND --help``; docs/cli.md has
the whole reference. Every command takes local paths and fsspec URLs
(``s3://``, ``gs://``, ``memory://``, ...). Storage options come from the
backends' own environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...), from
``STORAGE_EMULATOR_HOST`` for a GCS emulator, and from repeatable
``--option KEY=VALUE`` (``--src-option``/``--dst-option`` for ``cp``); a
VALUE is parsed as JSON if it parses, else taken as a string.

This module is the command group (its global options, logging, the help
that every command shares) and the list of its commands, one module per
family of commands beside it.

Example:
    >>> from click.testing import CliRunner
    >>> import numpy as np, cloudckpt
    >>> _ = cloudckpt.save("memory://doc-cli/ckpt-1", {"w": np.ones(2)})
    >>> result = CliRunner().invoke(main, ["ls", "memory://doc-cli"])
    >>> result.exit_code, "committed" in result.output
    (0, True)
"""

from __future__ import annotations

import logging

import click

from cloudckpt import __about__
from cloudckpt.tools.cli.cp import cp_cmd
from cloudckpt.tools.cli.demo import demo_cmd
from cloudckpt.tools.cli.export_import import export_cmd, import_cmd
from cloudckpt.tools.cli.ls_inspect import inspect_cmd, ls_cmd
from cloudckpt.tools.cli.rm_gc import gc_cmd, rm_cmd
from cloudckpt.tools.cli.storage_options import redact, reset_command
from cloudckpt.tools.cli.verify import verify_cmd

__all__ = ["main", "EPILOG"]

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


class _EchoHandler(logging.Handler):
    """Log records to the current stderr (click's, under a test runner), credentials redacted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(redact(self.format(record)), err=True)
        except Exception:  # pragma: no cover - never let logging break a command
            self.handleError(record)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__about__.__version__, prog_name="cloudckpt")
@click.option("-v", "--verbose", count=True, help="Log what cloudckpt does to stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Inspect, verify, copy and clean up cloudckpt checkpoints on any fsspec URL
    (local paths, s3://, gs://, memory://, ...)."""
    reset_command()
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


# the commands (`cloudckpt --help` lists them by name)
for _command in (ls_cmd, inspect_cmd, verify_cmd, cp_cmd, rm_cmd, gc_cmd, export_cmd, import_cmd, demo_cmd):
    main.add_command(_command)
