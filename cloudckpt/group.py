"""``cloudckpt.group``, the name of release 0.1: the process groups now live in :mod:`cloudckpt.distributed`.

Example:
    >>> from cloudckpt.group import resolve_group
    >>> resolve_group(None).size
    1
"""

from cloudckpt.distributed.group import SINGLE, Group, SingleProcess, resolve_group

__all__ = ["SINGLE", "Group", "SingleProcess", "resolve_group"]
