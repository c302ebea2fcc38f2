"""PyTorch Distributed Checkpoint (DCP) storage: ``cloudckpt.dcp.Writer`` and ``cloudckpt.dcp.Reader``.

An alias of :mod:`cloudckpt.integrations.dcp` (imports torch).

Example:
    >>> import torch.distributed.checkpoint as dcp
    >>> issubclass(Writer, dcp.StorageWriter), issubclass(Reader, dcp.StorageReader)
    (True, True)
"""

from cloudckpt.integrations.dcp import Reader, Writer, metadata_from_json, metadata_to_json

__all__ = ["Writer", "Reader", "metadata_to_json", "metadata_from_json"]
