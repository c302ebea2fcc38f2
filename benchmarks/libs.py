"""The libraries under test, each behind one small adapter.

Every adapter saves and loads a flat ``{name: array}`` state the way a user
of that library would. On local disk each save is made *durable*: libraries
that fsync their files themselves (cloudckpt, the raw baselines, torch DCP's
``FileSystemWriter(sync_files=True)``) are trusted; for every other library
the benchmark fsyncs each file and directory it wrote, inside the timed
region (``fsyncs_itself = False``), so that all rows pay for durability.

On fsspec targets (``memory://``, ``s3://``, ``gs://``) the single-file
formats (np.savez, safetensors, torch.save) serialize to bytes in memory and
upload one object with the same fsspec filesystem cloudckpt uses; loads fetch
the object and deserialize. That is what a user without a cloud-native
checkpoint library does.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.workloads import Spec

State = dict[str, Any]


@dataclass
class Ctx:
    """Where one measurement writes/reads."""

    target: str  # local | memory | s3 | gcs | s3-lat
    url: str  # local path or fsspec URL (no trailing slash)
    storage_options: dict[str, Any] = field(default_factory=dict)
    spec: Spec = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # adapter-reported facts (client request counts)

    @property
    def local(self) -> bool:
        return self.target == "local"

    @property
    def protocol(self) -> str:
        return "file" if self.local else self.url.split("://", 1)[0]

    def fs(self) -> Any:
        return make_fs(self.protocol, self.storage_options)

    def fspath(self, key: str = "") -> str:
        """The filesystem path (no protocol) of ``key`` under the URL."""
        base = self.url.split("://", 1)[1] if "://" in self.url else self.url
        if self.protocol == "memory":
            base = "/" + base.lstrip("/")
        return f"{base}/{key}" if key else base


_FS_CACHE: dict[tuple[str, str], Any] = {}


def make_fs(protocol: str, storage_options: dict[str, Any]) -> Any:
    key = (protocol, json.dumps(storage_options, sort_keys=True))
    if key in _FS_CACHE:
        return _FS_CACHE[key]
    import fsspec

    if protocol in ("gs", "gcs"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        from gcsfs.core import GCSFileSystem

        fs = GCSFileSystem(skip_instance_cache=True, **storage_options)
    elif protocol == "memory":
        fs = fsspec.filesystem("memory")
    else:
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **storage_options)
    _FS_CACHE[key] = fs
    return fs


def fsync_tree(path: str) -> None:
    """fsync every file and directory at/below ``path``, and its parent directory."""

    def sync(p: str, flags: int) -> None:
        fd = os.open(p, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    dflags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path, topdown=False):
            for f in files:
                sync(os.path.join(root, f), os.O_RDONLY)
            for d in dirs:
                sync(os.path.join(root, d), dflags)
        sync(path, dflags)
    elif os.path.exists(path):
        sync(path, os.O_RDONLY)
    sync(os.path.dirname(os.path.abspath(path)), dflags)


def _bytes_view(a: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _index(state: State) -> list[dict[str, Any]]:
    return [{"name": k, "dtype": np.asarray(v).dtype.str, "shape": list(np.shape(v)), "file": f"{i:05d}.bin"}
            for i, (k, v) in enumerate(state.items())]


class Lib:
    name = "?"
    label = "?"
    requires: tuple[str, ...] = ()  # importable modules
    targets: tuple[str, ...] = ("local", "memory", "s3", "gcs", "s3-lat")
    fsyncs_itself = False
    has_async = False
    note = ""
    # What a user's script imports to use the library: timed (as "imports") in the fresh-process
    # phases (the first load, the time to the first checkpoint); the rest of the library's first-call
    # costs (lazy imports, client creation) fall into its load or save time there.
    imports: tuple[str, ...] = ()

    def available(self) -> str | None:
        """None if usable, else why not."""
        import importlib.util

        for m in self.requires:
            if importlib.util.find_spec(m) is None:
                return f"{m} is not installed"
        return None

    def prepare(self, ctx: Ctx) -> None:
        """Import what the save/load needs (outside the timed region of the steady-state save and async phases)."""

    def user_import(self) -> None:
        """Import the library as a user's script does (inside the timed region of the fresh-process phases)."""
        import importlib

        for m in self.imports:
            importlib.import_module(m)

    def convert(self, state: dict[str, np.ndarray]) -> State:
        return state

    def save(self, state: State, ctx: Ctx) -> None:
        raise NotImplementedError

    def async_prepare(self, state: State, ctx: Ctx) -> Any:
        """Untimed set-up of an async save (constructing a manager or checkpointer)."""
        return None

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        """Start an async save (timed until it returns); return the wait-for-completion function."""
        raise NotImplementedError

    def load(self, ctx: Ctx) -> State:
        raise NotImplementedError


# ---------------------------------------------------------------- raw baselines


class RawSequential(Lib):
    name = "raw"
    label = "raw files (sequential)"
    fsyncs_itself = True
    note = "one file/object per tensor, written one after another; local: write + fsync each file, fsync dir"

    def save(self, state: State, ctx: Ctx) -> None:
        index = _index(state)
        if ctx.local:
            os.makedirs(ctx.url, exist_ok=True)
            for ent, arr in zip(index, state.values(), strict=True):
                _write_file(os.path.join(ctx.url, ent["file"]), _bytes_view(arr))
            _write_file(os.path.join(ctx.url, "index.json"), json.dumps(index).encode())
            _fsync_dir(ctx.url)
            return
        fs = ctx.fs()
        for ent, arr in zip(index, state.values(), strict=True):
            fs.pipe_file(ctx.fspath(ent["file"]), _bytes_view(arr).tobytes())
        fs.pipe_file(ctx.fspath("index.json"), json.dumps(index).encode())

    def load(self, ctx: Ctx) -> State:
        if ctx.local:
            with open(os.path.join(ctx.url, "index.json"), "rb") as f:
                index = json.loads(f.read())
            return {e["name"]: _read_file(os.path.join(ctx.url, e["file"]), e) for e in index}
        fs = ctx.fs()
        index = json.loads(fs.cat_file(ctx.fspath("index.json")))
        return {e["name"]: _from_bytes(fs.cat_file(ctx.fspath(e["file"])), e) for e in index}


class RawThreads(Lib):
    name = "raw-threads"
    label = "raw files (8 threads)"
    fsyncs_itself = True
    note = "as raw, 8 threads (local) / fsspec bulk pipe()/cat() (object stores, concurrent)"
    threads = 8

    def save(self, state: State, ctx: Ctx) -> None:
        index = _index(state)
        if ctx.local:
            os.makedirs(ctx.url, exist_ok=True)
            with ThreadPoolExecutor(self.threads) as ex:
                list(ex.map(lambda ea: _write_file(os.path.join(ctx.url, ea[0]["file"]), _bytes_view(ea[1])),
                            zip(index, state.values(), strict=True)))
            _write_file(os.path.join(ctx.url, "index.json"), json.dumps(index).encode())
            _fsync_dir(ctx.url)
            return
        fs = ctx.fs()
        data = {ctx.fspath(e["file"]): _bytes_view(a).tobytes() for e, a in zip(index, state.values(), strict=True)}
        data[ctx.fspath("index.json")] = json.dumps(index).encode()
        fs.pipe(data)

    def load(self, ctx: Ctx) -> State:
        if ctx.local:
            with open(os.path.join(ctx.url, "index.json"), "rb") as f:
                index = json.loads(f.read())
            with ThreadPoolExecutor(self.threads) as ex:
                arrays = list(ex.map(lambda e: _read_file(os.path.join(ctx.url, e["file"]), e), index))
            return {e["name"]: a for e, a in zip(index, arrays, strict=True)}
        fs = ctx.fs()
        index = json.loads(fs.cat_file(ctx.fspath("index.json")))
        paths = [ctx.fspath(e["file"]) for e in index]
        got = fs.cat(paths)
        return {e["name"]: _from_bytes(got[p], e) for e, p in zip(index, paths, strict=True)}


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, view: memoryview | bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        mv = memoryview(view)
        while mv.nbytes:
            n = os.write(fd, mv)
            mv = mv[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_file(path: str, ent: dict[str, Any]) -> np.ndarray:
    out = np.empty(ent["shape"], dtype=np.dtype(ent["dtype"]))
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < view.nbytes:
            n = f.readinto(view[done:])
            if not n:
                raise OSError(f"{path}: short read")
            done += n
    return out


def _from_bytes(data: bytes, ent: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(ent["dtype"])).reshape(ent["shape"])


# ---------------------------------------------------------------- cloudckpt


class CloudCkpt(Lib):
    name = "cloudckpt"
    label = "cloudckpt"
    requires = ("cloudckpt",)
    fsyncs_itself = True
    has_async = True
    imports = ("cloudckpt",)
    note = "cloudckpt.layout.checkpoint_io.write_checkpoint/read_state (= cloudckpt.save/load); async: CheckpointManager(async_save=True)"

    def prepare(self, ctx: Ctx) -> None:
        # cloudckpt imports zarr lazily at its first save (zarr_meta._dtype_json: 0.5-2 s on
        # this machine); like every other library's imports, that is not part of the timing.
        import zarr.core.dtype  # noqa: F401

        import cloudckpt
        import cloudckpt.layout.checkpoint_io
        import cloudckpt.storage

        if not ctx.local:
            cloudckpt.storage.open_storage(ctx.url, ctx.storage_options or None)  # imports s3fs/gcsfs

    def save(self, state: State, ctx: Ctx) -> None:
        from cloudckpt.layout.checkpoint_io import write_checkpoint
        from cloudckpt.storage import open_storage

        storage = open_storage(ctx.url, ctx.storage_options or None)
        write_checkpoint(storage, state)
        ctx.extra["client_requests"] = storage.stats.snapshot()

    def async_prepare(self, state: State, ctx: Ctx) -> Any:
        import cloudckpt

        ckpt = cloudckpt.Checkpoint(state=state)
        return cloudckpt.CheckpointManager(ckpt, ctx.url, max_to_keep=2, async_save=True,
                                           storage_options=ctx.storage_options or None)

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        prepared.save()
        return prepared.sync

    def load(self, ctx: Ctx) -> State:
        from cloudckpt.layout.checkpoint_io import read_manifest, read_state
        from cloudckpt.storage import open_storage

        storage = open_storage(ctx.url, ctx.storage_options or None)
        state = read_state(storage, read_manifest(storage))
        ctx.extra["client_requests"] = storage.stats.snapshot()
        return state


# ---------------------------------------------------------------- single-file formats


class _SingleFile(Lib):
    filename = "ckpt"

    def _path(self, ctx: Ctx) -> str:
        return os.path.join(ctx.url, self.filename) if ctx.local else ctx.fspath(self.filename)

    def save(self, state: State, ctx: Ctx) -> None:
        if ctx.local:
            os.makedirs(ctx.url, exist_ok=True)
            self.save_file(state, self._path(ctx))
            return
        ctx.fs().pipe_file(self._path(ctx), self.to_bytes(state))

    def load(self, ctx: Ctx) -> State:
        if ctx.local:
            return self.load_file(self._path(ctx))
        return self.from_bytes(ctx.fs().cat_file(self._path(ctx)))

    def save_file(self, state: State, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.to_bytes(state))

    def load_file(self, path: str) -> State:
        with open(path, "rb") as f:
            return self.from_bytes(f.read())

    def to_bytes(self, state: State) -> bytes:
        raise NotImplementedError

    def from_bytes(self, data: bytes) -> State:
        raise NotImplementedError


class NpSavez(_SingleFile):
    name = "npz"
    label = "np.savez"
    filename = "ckpt.npz"
    note = "np.savez (uncompressed zip of .npy); fsspec targets: BytesIO + one pipe_file"

    def save_file(self, state: State, path: str) -> None:
        np.savez(path, **state)

    def load_file(self, path: str) -> State:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def to_bytes(self, state: State) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **state)
        return buf.getvalue()

    def from_bytes(self, data: bytes) -> State:
        with np.load(io.BytesIO(data)) as z:
            return {k: z[k] for k in z.files}


class Safetensors(_SingleFile):
    name = "safetensors"
    label = "safetensors"
    requires = ("safetensors",)
    filename = "model.safetensors"
    imports = ("safetensors.numpy",)
    note = "safetensors.numpy save_file/load_file; fsspec targets: save() bytes + one pipe_file"

    def prepare(self, ctx: Ctx) -> None:
        import safetensors.numpy  # noqa: F401

    def save_file(self, state: State, path: str) -> None:
        from safetensors.numpy import save_file

        save_file(state, path)

    def load_file(self, path: str) -> State:
        from safetensors.numpy import load_file

        return load_file(path)

    def to_bytes(self, state: State) -> bytes:
        from safetensors.numpy import save

        return save(state)

    def from_bytes(self, data: bytes) -> State:
        from safetensors.numpy import load

        return load(data)


def _to_torch(state: dict[str, np.ndarray]) -> State:
    import torch

    return {k: torch.from_numpy(v) for k, v in state.items()}


def _torch_empty(spec: Spec) -> State:
    import torch

    return {n: torch.empty(shape, dtype=getattr(torch, dt)) for n, shape, dt in spec}


class TorchSave(_SingleFile):
    name = "torch.save"
    label = "torch.save"
    requires = ("torch",)
    filename = "ckpt.pt"
    imports = ("torch",)
    note = "torch.save / torch.load(weights_only=True); fsspec targets: BytesIO + one pipe_file"

    def prepare(self, ctx: Ctx) -> None:
        import torch  # noqa: F401

    def convert(self, state: dict[str, np.ndarray]) -> State:
        return _to_torch(state)

    def save_file(self, state: State, path: str) -> None:
        import torch

        torch.save(state, path)

    def load_file(self, path: str) -> State:
        import torch

        return torch.load(path, weights_only=True)

    def to_bytes(self, state: State) -> bytes:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def from_bytes(self, data: bytes) -> State:
        import torch

        return torch.load(io.BytesIO(data), weights_only=True)


# ---------------------------------------------------------------- sharded / distributed peers


class TorchDCP(Lib):
    name = "dcp"
    label = "torch DCP"
    requires = ("torch",)
    fsyncs_itself = True
    has_async = True
    imports = ("torch", "torch.distributed.checkpoint")
    note = ("torch.distributed.checkpoint, single process: FileSystemWriter(sync_files=True, thread_count=1, defaults) "
            "on local disk, FsspecWriter on fsspec URLs; load into pre-allocated tensors; async: dcp.async_save")

    def prepare(self, ctx: Ctx) -> None:
        import warnings

        import torch.distributed.checkpoint

        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        if not ctx.local:
            import torch.distributed.checkpoint._fsspec_filesystem  # noqa: F401

    def user_import(self) -> None:
        import warnings

        super().user_import()
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")

    def convert(self, state: dict[str, np.ndarray]) -> State:
        return _to_torch(state)

    def _writer(self, ctx: Ctx) -> Any:
        import torch.distributed.checkpoint as dcp

        if ctx.local:
            return dcp.FileSystemWriter(ctx.url)
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(ctx.url, **ctx.storage_options)

    def save(self, state: State, ctx: Ctx) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(state, storage_writer=self._writer(ctx))

    def async_prepare(self, state: State, ctx: Ctx) -> Any:
        return self._writer(ctx)

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        import torch.distributed.checkpoint as dcp

        fut = dcp.async_save(state, storage_writer=prepared)
        return lambda: fut.result()

    def load(self, ctx: Ctx) -> State:
        import torch.distributed.checkpoint as dcp

        out = _torch_empty(ctx.spec)
        if ctx.local:
            reader = dcp.FileSystemReader(ctx.url)
        else:
            from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

            reader = FsspecReader(ctx.url, **ctx.storage_options)
        dcp.load(out, storage_reader=reader)
        return out


class Orbax(Lib):
    name = "orbax"
    label = "orbax"
    requires = ("orbax.checkpoint", "jax")
    targets = ("local", "s3", "s3-lat", "gcs")
    has_async = True
    imports = ("jax", "orbax.checkpoint")
    note = "orbax.checkpoint.StandardCheckpointer (OCDBT + zarr3 via tensorstore) on numpy arrays, JAX CPU"

    def prepare(self, ctx: Ctx) -> None:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax  # noqa: F401
        import orbax.checkpoint  # noqa: F401

    def _path(self, ctx: Ctx) -> str:
        return os.path.join(os.path.abspath(ctx.url), "orbax") if ctx.local else ctx.url + "/orbax"

    def save(self, state: State, ctx: Ctx) -> None:
        import orbax.checkpoint as ocp

        ck = ocp.StandardCheckpointer()
        ck.save(self._path(ctx), state)
        ck.wait_until_finished()
        ck.close()

    def async_prepare(self, state: State, ctx: Ctx) -> Any:
        import orbax.checkpoint as ocp

        return ocp.StandardCheckpointer()

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        ck = prepared
        ck.save(self._path(ctx), state)

        def wait() -> None:
            ck.wait_until_finished()
            ck.close()

        return wait

    def load(self, ctx: Ctx) -> State:
        import orbax.checkpoint as ocp

        ck = ocp.StandardCheckpointer()
        out = ck.restore(self._path(ctx))
        ck.close()
        return dict(out)


class TorchSnapshot(Lib):
    name = "torchsnapshot"
    label = "torchsnapshot"
    requires = ("torchsnapshot", "torch")
    targets = ("local", "s3", "s3-lat", "gcs")
    has_async = True
    imports = ("torch", "torchsnapshot")
    note = "torchsnapshot.Snapshot.take/restore (StateDict app state; S3 via its aiobotocore plugin + AWS_ENDPOINT_URL)"

    def prepare(self, ctx: Ctx) -> None:
        import torchsnapshot  # noqa: F401

    def convert(self, state: dict[str, np.ndarray]) -> State:
        return _to_torch(state)

    def _path(self, ctx: Ctx) -> str:
        return os.path.join(ctx.url, "snap") if ctx.local else ctx.url + "/snap"

    def save(self, state: State, ctx: Ctx) -> None:
        import torchsnapshot

        torchsnapshot.Snapshot.take(path=self._path(ctx), app_state={"s": torchsnapshot.StateDict(**state)})

    def async_save(self, state: State, ctx: Ctx, prepared: Any) -> Callable[[], None]:
        import torchsnapshot

        pending = torchsnapshot.Snapshot.async_take(path=self._path(ctx), app_state={"s": torchsnapshot.StateDict(**state)})
        return lambda: pending.wait()

    def load(self, ctx: Ctx) -> State:
        import torchsnapshot

        out = torchsnapshot.StateDict(**_torch_empty(ctx.spec))
        torchsnapshot.Snapshot(path=self._path(ctx)).restore(app_state={"s": out})
        return dict(out)


class ZarrNaive(Lib):
    name = "zarr-naive"
    label = "naive zarr"
    requires = ("zarr",)
    imports = ("zarr",)
    note = "zarr 3 defaults: open_group(mode='w') + create_array(data=...) per tensor (auto chunks, zstd); no fsync of its own"

    def prepare(self, ctx: Ctx) -> None:
        import zarr
        import zarr.storage  # noqa: F401

    def _store(self, ctx: Ctx, read_only: bool) -> Any:
        import zarr.storage

        if ctx.local:
            return zarr.storage.LocalStore(ctx.url, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(ctx.url, storage_options=ctx.storage_options or None, read_only=read_only)

    def save(self, state: State, ctx: Ctx) -> None:
        import warnings

        import zarr

        warnings.filterwarnings("ignore", category=UserWarning)
        g = zarr.open_group(self._store(ctx, False), mode="w")
        for k, v in state.items():
            g.create_array(k, data=v)

    def load(self, ctx: Ctx) -> State:
        import warnings

        import zarr

        warnings.filterwarnings("ignore", category=UserWarning)
        g = zarr.open_group(self._store(ctx, True), mode="r")
        return {k: a[...] for k, a in g.arrays()}


ALL_LIBS: list[Lib] = [
    CloudCkpt(),
    RawSequential(),
    RawThreads(),
    NpSavez(),
    Safetensors(),
    TorchSave(),
    TorchDCP(),
    Orbax(),
    TorchSnapshot(),
    ZarrNaive(),
]
LIBS: dict[str, Lib] = {lib.name: lib for lib in ALL_LIBS}
BASELINES = ("raw", "raw-threads")
