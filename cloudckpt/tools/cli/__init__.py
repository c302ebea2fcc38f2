"""The ``cloudckpt`` command (``main``): one module per job, re-exported here.

``app`` (the command group), ``storage_options`` (parsing ``KEY=VALUE``,
remembering what to redact), ``exits`` (exit statuses), ``output`` and
``progress`` (what is printed), ``storage_questions`` (what is asked of the
storage layer beyond its verbs), and the commands: ``ls_inspect``,
``verify``, ``cp``, ``rm_gc``, ``demo``.
"""

from cloudckpt.tools.cli.app import main
from cloudckpt.tools.cli.exits import EXIT
from cloudckpt.tools.cli.output import human, plural
from cloudckpt.tools.cli.storage_options import (
    env_storage_options,
    parse_option,
    redact,
    reset_command,
    storage_options_for,
)

__all__ = [
    "main",
    "parse_option",
    "env_storage_options",
    "storage_options_for",
    "EXIT",
    "redact",
    "human",
    "plural",
    "reset_command",
]
