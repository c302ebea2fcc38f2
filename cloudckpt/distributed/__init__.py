"""Several processes saving one checkpoint: process groups and the collective plan.

``group`` is the small collective interface a multi-host save needs (a
torch.distributed or JAX process group behind it); ``collective`` plans
which rank writes which bytes.

Example:
    >>> from cloudckpt.distributed import resolve_group
    >>> resolve_group(None).size
    1
"""

from cloudckpt.distributed.group import Group, resolve_group

__all__ = ["Group", "resolve_group"]
