"""What export and import share: shard sizes, file names, opening a file URL, the reports.

Example:
    >>> parse_size("5GB"), parse_size("10MiB"), parse_size(1000)
    (5000000000, 10485760, 1000)
    >>> shard_name("model", 2, 3), FILE_NAME.match("model-00002-of-00003.safetensors") is not None
    ('model-00002-of-00003.safetensors', True)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cloudckpt.storage import Storage, open_storage

__all__ = [
    "DEFAULT_MAX_SHARD",
    "FILE_NAME",
    "parse_size",
    "shard_name",
    "index_name",
    "open_file",
    "split_prefix",
    "ExportReport",
    "ImportReport",
    "ProgressFn",
]

#: as ``transformers``' ``save_pretrained``: shards of at most 5 GB
DEFAULT_MAX_SHARD = 5_000_000_000
#: the names of the files of an export (``model.safetensors``, ``model-00001-of-00002.safetensors``)
FILE_NAME = re.compile(r"^(?P<name>.+?)(?:-(?P<i>\d{5})-of-(?P<n>\d{5}))?\.safetensors$")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip

ProgressFn = Callable[[int, int], None]


def parse_size(size: int | str) -> int:
    """Bytes of ``size``: an int, or a string as ``transformers`` takes (``"5GB"``, ``"500MB"``, ``"1GiB"``).

    Example:
        >>> parse_size("500MB"), parse_size("1.5KiB")
        (500000000, 1536)
    """
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
        if m is None or m.group(2).upper() not in _UNITS:
            raise ValueError(f"max shard size {size!r}: give bytes, or a number with KB, MB, GB, KiB, MiB or GiB")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"max shard size {size!r} must be positive")
    return n


def shard_name(name: str, i: int, n: int) -> str:
    """The file name of shard ``i`` (from 1) of ``n``: ``name.safetensors`` when ``n`` is 1.

    Example:
        >>> shard_name("model", 1, 1), shard_name("model", 3, 12)
        ('model.safetensors', 'model-00003-of-00012.safetensors')
    """
    return f"{name}.safetensors" if n == 1 else f"{name}-{i:05d}-of-{n:05d}.safetensors"


def index_name(name: str) -> str:
    """The index of a sharded export: ``model.safetensors.index.json``.

    Example:
        >>> index_name("diffusion_pytorch_model")
        'diffusion_pytorch_model.safetensors.index.json'
    """
    return f"{name}.safetensors.index.json"


def open_file(url: str, storage_options: dict[str, Any] | None) -> tuple[Storage, str]:
    """The storage of the directory holding the file ``url``, and the file's key in it.

    Example:
        >>> s, key = open_file("memory://doc-open-file/run/model.safetensors", None)
        >>> s.url, key
        ('memory://doc-open-file/run', 'model.safetensors')
    """
    head, sep, key = url.rstrip("/").rpartition("/")
    if not sep:
        head = "."
    if not key or not head or head.endswith(":/"):
        raise ValueError(f"{url}: a file URL needs a directory (or bucket) above it")
    return open_storage(head, storage_options), key


def split_prefix(prefix: str | None) -> tuple[str, ...]:
    """A key prefix (``"model"``, ``"model/encoder"``) as a path of keys.

    Example:
        >>> split_prefix("model/encoder"), split_prefix(None), split_prefix("/")
        (('model', 'encoder'), (), ())
    """
    return tuple(p for p in (prefix or "").split("/") if p)


@dataclass
class ExportReport:
    """What :func:`~cloudckpt.tools.safetensors_io.export_safetensors` wrote.

    ``files`` are the URLs of the safetensors files, ``index`` that of
    ``model.safetensors.index.json`` (None for a single file), ``skipped`` the
    paths of the leaves that are not tensors (ints, strings: not exported).

    Example:
        >>> ExportReport("memory://x", ["memory://x/model.safetensors"], None, 1, 12, 0.1).to_dict()["tensors"]
        1
    """

    url: str
    files: list[str]
    index: str | None
    tensors: int
    nbytes: int
    seconds: float
    skipped: list[str] = field(default_factory=list)
    largest_shard: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


@dataclass
class ImportReport:
    """What :func:`~cloudckpt.tools.safetensors_io.import_safetensors` read and saved.

    Example:
        >>> ImportReport("memory://c", ["memory://hf/model.safetensors"], 2, 24, 0.1, {"format": "pt"}).to_dict()["metadata"]
        {'format': 'pt'}
    """

    url: str
    files: list[str]
    tensors: int
    nbytes: int
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)
