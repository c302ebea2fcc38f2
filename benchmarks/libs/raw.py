"""The raw baselines: one file or object per tensor, sequential or 8 threads (the limit of the same run)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from benchmarks.libs.base import Ctx, Lib, State


def _bytes_view(a: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _index(state: State) -> list[dict[str, Any]]:
    return [{"name": k, "dtype": np.asarray(v).dtype.str, "shape": list(np.shape(v)), "file": f"{i:05d}.bin"}
            for i, (k, v) in enumerate(state.items())]


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
