"""What every adapter shares: where a measurement writes (``Ctx``), the ``Lib`` interface, fsspec
filesystems, fsync of what a library wrote, and numpy <-> torch helpers of the torch-based peers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.workloads import Spec

State = dict[str, Any]


@dataclass
class Ctx:
    """Where one measurement writes/reads."""

    target: str  # local | memory | s3 | gcs | s3-lat | s3-disk
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


class Lib:
    name = "?"
    label = "?"
    requires: tuple[str, ...] = ()  # importable modules
    targets: tuple[str, ...] = ("local", "memory", "s3", "gcs", "s3-lat", "s3-disk")
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
            try:
                found = importlib.util.find_spec(m)
            except ModuleNotFoundError:  # a submodule ("orbax.checkpoint") whose parent package is missing
                found = None
            if found is None:
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


def to_torch(state: dict[str, np.ndarray]) -> State:
    import torch

    return {k: torch.from_numpy(v) for k, v in state.items()}


def torch_empty(spec: Spec) -> State:
    import torch

    return {n: torch.empty(shape, dtype=getattr(torch, dt)) for n, shape, dt in spec}
