"""``python -m cloudckpt``: the ``cloudckpt`` command (see :mod:`cloudckpt.tools.cli`)."""

from cloudckpt.tools.cli import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="cloudckpt")
