"""Import a safetensors file, or a sharded Hugging Face directory, into a cloudckpt checkpoint.

Example:
    >>> import numpy as np, cloudckpt
    >>> url = cloudckpt.save("memory://doc-import/c", {"w": np.arange(3, dtype="i8")})
    >>> _ = cloudckpt.tools.safetensors_io.export_safetensors(url, "memory://doc-import/hf/weights.safetensors")
    >>> r = import_safetensors("memory://doc-import/hf/weights.safetensors", "memory://doc-import/c2")
    >>> r.tensors, cloudckpt.load(r.url)
    (1, {'w': array([0, 1, 2])})
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from cloudckpt.api import save
from cloudckpt.errors import CheckpointExistsError, CheckpointNotFoundError
from cloudckpt.format.manifest import MANIFEST_KEY
from cloudckpt.storage import Storage, open_storage
from cloudckpt.tools.safetensors_io.common import ImportReport, ProgressFn, open_file, split_prefix
from cloudckpt.tools.safetensors_io.spec import TensorEntry, parse_header

__all__ = ["import_safetensors", "source_files", "runs_of"]

log = logging.getLogger("cloudckpt")

_INDEX_MAX = 64 << 20  # the most bytes of a model.safetensors.index.json read


def import_safetensors(
    src_url: str,
    ckpt_url: str,
    *,
    prefix: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    ckpt_storage_options: dict[str, Any] | None = None,
    spool_dir: str | None = None,
    buffer_bytes: int = 256 << 20,
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Save the tensors of safetensors files at ``src_url`` as one checkpoint at ``ckpt_url``.

    ``src_url`` is a ``.safetensors`` file, or a directory: with a
    ``*.safetensors.index.json`` the files its ``weight_map`` names, otherwise
    every ``*.safetensors`` in it. The state is a flat dict of the tensors'
    names (``"transformer.h.0.attn.c_attn.weight"``: dots are kept, as in a
    torch ``state_dict``), placed under ``prefix`` (``"model"`` gives
    ``{"model": {...}}``), so that exporting with the same prefix gives back
    the same names and bytes. Tensors keep their dtype (bfloat16 and float8
    as ml_dtypes arrays). The header's ``__metadata__`` is kept in the
    checkpoint's metadata under ``"safetensors"`` (an export writes it back),
    beside ``metadata``.

    Headers are checked before any data is read (known dtypes, sizes
    matching shapes, tensors covering the file exactly; ValueError naming the
    file and tensor otherwise). Memory stays bounded: on local disk the files
    are mapped, not read; from other storage the files are fetched by ranged
    reads of back-to-back tensors (runs of at most ``buffer_bytes`` divided by
    the storage's concurrency, or one larger tensor) into a local spool
    directory (``spool_dir``, default the system's temporary directory;
    deleted afterwards) and mapped from there, with at most ``buffer_bytes``
    (or one run) in memory at once. The checkpoint is written by :func:`cloudckpt.save`
    (create-only commit; an existing checkpoint raises
    :class:`~cloudckpt.CheckpointExistsError`).

    Example:
        >>> import numpy as np, cloudckpt
        >>> url = cloudckpt.save("memory://doc-import2/c", {"m": {"a.b": np.ones(2, "f2")}})
        >>> _ = cloudckpt.tools.safetensors_io.export_safetensors(url, "memory://doc-import2/hf", prefix="m")
        >>> r = import_safetensors("memory://doc-import2/hf", "memory://doc-import2/c2", prefix="m")
        >>> list(cloudckpt.load(r.url)["m"]), r.metadata
        (['a.b'], {'format': 'pt'})
    """
    t0 = time.perf_counter()
    _refuse_existing(ckpt_url, ckpt_storage_options)  # before anything is read (save checks again)
    src, files, weight_map = source_files(src_url, storage_options)
    headers, names, meta = _headers(src, files, weight_map)
    total = sum(t.nbytes for _, _, ts, _ in headers for t in ts)
    with _reader(src, spool_dir) as read:
        flat: dict[str, Any] = {}
        done = 0
        for f, _, tensors, size in headers:
            flat.update(read(f, tensors, size, buffer_bytes))
            done += sum(t.nbytes for t in tensors)
            if progress is not None:
                progress(done, total)
        state: Any = flat
        for key in reversed(split_prefix(prefix)):
            state = {key: state}
        url = save(
            ckpt_url, state, storage_options=ckpt_storage_options, metadata={**(metadata or {}), "safetensors": meta}
        )
        del flat, state
    log.info("imported %s into %s: %d tensors, %d bytes", src.url, url, len(names), total)
    return ImportReport(url, [src.url_for(f) for f in files], len(names), total, time.perf_counter() - t0, meta)


def _headers(
    src: Storage, files: list[str], weight_map: dict[str, str] | None
) -> tuple[list[tuple[str, dict[str, str], list[TensorEntry], int]], dict[str, str], dict[str, str]]:
    """Every file's header, checked: ``(file, metadata, tensors, size)`` each, the file
    of every tensor (a name in two files, or not where the index says, raises), the metadata."""
    headers = [(f, *_header(src, f)) for f in files]
    names: dict[str, str] = {}
    for f, _, tensors, _ in headers:
        for t in tensors:
            if t.name in names:
                raise ValueError(f"tensor {t.name!r} is in both {src.url_for(names[t.name])} and {src.url_for(f)}")
            names[t.name] = f
    if weight_map is not None and weight_map != names:
        wrong = sorted(set(weight_map.items()) ^ set(names.items()))[0][0]
        raise ValueError(
            f"{src.url}: the index does not match the files: tensor {wrong!r} is in "
            f"{names.get(wrong, 'no file')}, the index says {weight_map.get(wrong, 'nothing')}"
        )
    meta: dict[str, str] = {}
    for _, m, _, _ in headers:
        meta.update(m)
    return headers, names, meta


def _refuse_existing(ckpt_url: str, options: dict[str, Any] | None) -> None:
    dst = open_storage(ckpt_url, options)
    if dst.exists(MANIFEST_KEY):
        raise CheckpointExistsError(
            f"a committed checkpoint already exists at {dst.url}; committed checkpoints are never overwritten: "
            "import to another path, or delete it first"
        )


def source_files(
    src_url: str, storage_options: dict[str, Any] | None
) -> tuple[Storage, list[str], dict[str, str] | None]:
    """The directory and the safetensors files that ``src_url`` names (see
    :func:`import_safetensors`), and the weight map of its index if it has one.

    Example:
        >>> from cloudckpt.storage import open_storage
        >>> open_storage("memory://doc-src/d").write("b.safetensors", b"")
        >>> s, files, index = source_files("memory://doc-src/d", None); files, index
        (['b.safetensors'], None)
    """
    url = src_url.rstrip("/")
    if url.endswith(".safetensors"):
        parent, key = open_file(url, storage_options)
        return parent, [key], None
    if url.endswith(".index.json"):
        return _indexed(*open_file(url, storage_options))
    src = open_storage(url, storage_options)
    listed, _ = src.list_dir("")
    indexes = sorted(f for f in listed if f.endswith(".safetensors.index.json"))
    if len(indexes) > 1 and "model.safetensors.index.json" in indexes:
        indexes = ["model.safetensors.index.json"]
    if len(indexes) > 1:
        raise ValueError(f"{src.url} holds several indexes ({', '.join(indexes)}): name one (its URL) to import")
    if indexes:
        return _indexed(src, indexes[0])
    files = sorted(f for f in listed if f.endswith(".safetensors"))
    if not files:
        raise CheckpointNotFoundError(f"no .safetensors file at {src.url}: give a file or a directory that holds some")
    return src, files, None


def _indexed(src: Storage, key: str) -> tuple[Storage, list[str], dict[str, str]]:
    """The files a ``*.safetensors.index.json`` names, in the order of their names."""
    where = src.url_for(key)
    data = src.read(key, max_bytes=_INDEX_MAX + 1)
    try:
        doc = json.loads(data) if len(data) <= _INDEX_MAX else None
        weight_map = doc["weight_map"] if isinstance(doc, dict) else None
    except (ValueError, KeyError):
        weight_map = None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{where}: not a safetensors index (a JSON object with a weight_map of names to files)")
    files = sorted(set(weight_map.values()))
    for f in files:
        if "/" in f or f in ("", ".", ".."):
            raise ValueError(f"{where}: the weight map names {f!r}, which is not a file of this directory")
    return src, files, weight_map


def _header(src: Storage, key: str) -> tuple[dict[str, str], list[TensorEntry], int]:
    """The metadata, tensors and size of the file ``key`` (two small reads)."""
    size = src.size(key)
    first = src.read(key, 0, min(size, 8)) if size else b""
    meta, tensors, _ = parse_header(first, lambda n: src.read(key, 8, 8 + n), size, src.url_for(key))
    return meta, tensors, size


@contextlib.contextmanager
def _reader(src: Storage, spool_dir: str | None) -> Iterator[Any]:
    """A function ``read(key, tensors, size, buffer_bytes) -> {name: array}``: mapped
    views of the file on local disk, else views of a local spool that lives as long as this context."""
    if src.capabilities.maps_objects:
        yield lambda key, tensors, size, _budget: _mapped(src.map_object(key, size), tensors)
        return
    with tempfile.TemporaryDirectory(prefix="cloudckpt-import-", dir=spool_dir) as tmp:
        spool = open_storage(tmp, fsync=False)  # a scratch copy: durability is the checkpoint's, not the spool's
        files = iter(range(1 << 62))  # spool keys: f<file>-<run>

        def read(key: str, tensors: list[TensorEntry], _size: int, budget: int) -> dict[str, np.ndarray]:
            return _spooled(src, spool, key, tensors, budget, f"f{next(files)}")

        yield read


def _as_array(data: Any, t: TensorEntry, offset: int = 0) -> np.ndarray:
    if t.nbytes == 0:
        return np.zeros(t.shape, t.dtype)
    return np.frombuffer(data, t.dtype, math.prod(t.shape), offset).reshape(t.shape)


def _mapped(view: memoryview, tensors: list[TensorEntry]) -> dict[str, np.ndarray]:
    """The tensors as views of the mapped file (no copy)."""
    return {t.name: _as_array(view, t, t.start) for t in tensors}


def runs_of(tensors: list[TensorEntry], piece: int) -> list[list[TensorEntry]]:
    """``tensors`` (in file order, back to back) cut into runs of at most ``piece``
    bytes, each read by one request; a tensor larger than ``piece`` is a run of its own.

    Example:
        >>> t = [TensorEntry(k, np.dtype("u1"), (n,), s, s + n) for k, s, n in [("a", 8, 4), ("b", 12, 4), ("c", 16, 9)]]
        >>> [[x.name for x in r] for r in runs_of(t, 8)]
        [['a', 'b'], ['c']]
    """
    runs: list[list[TensorEntry]] = []
    size = piece
    for t in tensors:
        if runs and size + t.nbytes <= piece:
            runs[-1].append(t)
            size += t.nbytes
        else:
            runs.append([t])
            size = t.nbytes
    return runs


def _spooled(
    src: Storage, spool: Storage, key: str, tensors: list[TensorEntry], budget: int, tag: str
) -> dict[str, np.ndarray]:
    """The file read in runs of back-to-back tensors, one ranged request each, every
    run written to the spool and mapped back; at most ``budget`` bytes (or one run)
    read and not yet spooled at once."""
    conc = src.max_concurrency
    runs = runs_of([t for t in tensors if t.nbytes], max(1 << 20, budget // conc))
    largest = max((r[-1].end - r[0].start for r in runs), default=1)
    limit = max(1, min(conc, budget // largest))

    def one(j: int) -> dict[str, np.ndarray]:
        run = runs[j]
        start, end = run[0].start, run[-1].end
        data: Any = src.read(key, start, end)
        if len(data) != end - start:
            raise ValueError(f"{src.url_for(key)}: truncated: {len(data)} of the {end - start} bytes from offset {start}")
        if spool.capabilities.maps_objects:
            name = f"{tag}-{j}"
            spool.write(name, data)
            data = spool.map_object(name, end - start)
        return {t.name: _as_array(data, t, t.start - start) for t in run}

    out = {t.name: np.zeros(t.shape, t.dtype) for t in tensors if not t.nbytes}
    for part in src.map(one, range(len(runs)), limit=limit):
        out.update(part)
    return {t.name: out[t.name] for t in tensors}
