"""Shared helpers of the CheckpointManager tests (not a test module)."""

from __future__ import annotations

import json
import threading

import pytest
import servers

import cloudckpt
from cloudckpt.layout.statefile import CheckpointState, parse_state

NOT_S3 = ("local", "memory", "gcs")


def on(*names: str):
    """Run a test on these backends only (of those selected by CLOUDCKPT_TEST_BACKENDS).

    The manager's logic does not depend on the backend; scenarios that add
    nothing on S3 (where moto makes every request slow) skip it, while every
    behaviour still runs on S3 in at least one test."""
    selected = servers.selected_backends()
    return pytest.mark.parametrize("backend", [n for n in names if n in selected], indirect=True)


class FakeClock:
    """A manager clock that moves only when told to (``clock=FakeClock(...)``)."""

    def __init__(self, t: float = 10000.0) -> None:
        self.t = float(t)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


def manager(b, ckpt, max_to_keep=3, *args, sub="run", **kw):
    """A CheckpointManager on ``b.url(sub)`` with the backend's storage options."""
    return cloudckpt.CheckpointManager(ckpt, b.url(sub), max_to_keep, *args, storage_options=b.storage_options, **kw)


_FS: dict[str, object] = {}


def fs_of(b):
    """An fsspec filesystem that inspects what the library wrote: one per backend and
    endpoint for the whole session (creating an S3 client costs ~0.5 s), its listing
    cache dropped before every use."""
    key = json.dumps([b.name, b.storage_options], sort_keys=True)
    fs = _FS.get(key)
    if fs is None:
        fs = _FS[key] = b.filesystem()
    fs.invalidate_cache()
    return fs


def _path(fs, url: str) -> str:
    return fs._strip_protocol(url).rstrip("/")


def committed(b, url: str) -> bool:
    """Whether a committed checkpoint is at ``url`` (its manifest exists)."""
    fs = fs_of(b)
    return fs.exists(_path(fs, url) + "/manifest.json")


def files(b, url: str) -> dict[str, int]:
    """``{relative key: size}`` of every object below ``url``."""
    fs = fs_of(b)
    path = _path(fs, url)
    out = {}
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    for key, info in found.items():
        if info.get("type") == "directory" or not key.startswith(path + "/"):
            continue
        out[key[len(path) + 1 :]] = int(info.get("size") or 0)
    return out


def read_text(b, url: str) -> str | None:
    fs = fs_of(b)
    try:
        return fs.cat_file(_path(fs, url)).decode()
    except FileNotFoundError:
        return None


def write_bytes(b, url: str, data: bytes) -> None:
    fs = fs_of(b)
    path = _path(fs, url)
    if b.name == "local":
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def remove(b, url: str) -> None:
    fs = fs_of(b)
    fs.rm(_path(fs, url), recursive=True)


def state_file(b, directory: str) -> CheckpointState | None:
    text = read_text(b, directory + "/checkpoint")
    return None if text is None else parse_state(text)


def name(url: str | None) -> str | None:
    return None if url is None else url.rstrip("/").rsplit("/", 1)[1]


class Gate:
    """A storage hook that blocks matching requests until released (async-save tests)."""

    def __init__(self, match) -> None:
        self.match = match
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, op: str, url: str) -> None:
        if threading.current_thread() is not threading.main_thread() and self.match(op, url):
            self.reached.set()
            if not self.release.wait(30):
                raise TimeoutError("gate never released")
