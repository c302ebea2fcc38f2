"""``python -m cloudckpt.tools.cli``: the ``cloudckpt`` command."""

from cloudckpt.tools.cli.app import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="cloudckpt")
