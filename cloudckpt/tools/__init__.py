"""Tools built on the library: copy, verify, administration and the command line.

``copy`` (a checkpoint or a directory, between any two URLs), ``verify``
(checksums, without loading), ``admin`` (ls, rm, gc) and ``cli`` (the
``cloudckpt`` command).
"""
