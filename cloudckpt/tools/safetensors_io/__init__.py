"""Hugging Face safetensors in and out of cloudckpt checkpoints, on any URL.

:func:`export_safetensors` writes a checkpoint's tensors (all, or those
under a key prefix) as sharded safetensors files with their
``model.safetensors.index.json``; :func:`import_safetensors` reads a file or
a sharded directory into a checkpoint. Both stream: memory is bounded by the
largest file (export) or the largest tensor (import), and both read and write
through cloudckpt's storage layer, so any pair of URLs works.

Example:
    >>> import numpy as np, cloudckpt
    >>> url = cloudckpt.save("memory://doc-st/ckpt-1", {"model": {"w": np.arange(4, dtype="f4")}})
    >>> _ = export_safetensors(url, "memory://doc-st/hf", prefix="model")
    >>> _ = import_safetensors("memory://doc-st/hf", "memory://doc-st/ckpt-2", prefix="model")
    >>> cloudckpt.load("memory://doc-st/ckpt-2")["model"]["w"]
    array([0., 1., 2., 3.], dtype=float32)
"""

from cloudckpt.tools.safetensors_io.common import DEFAULT_MAX_SHARD, ExportReport, ImportReport
from cloudckpt.tools.safetensors_io.exporter import export_safetensors
from cloudckpt.tools.safetensors_io.importer import import_safetensors

__all__ = ["export_safetensors", "import_safetensors", "ExportReport", "ImportReport", "DEFAULT_MAX_SHARD"]
