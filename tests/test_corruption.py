"""Damaged objects under a manager: never restored silently, named when found.

Each kind of object of the newest checkpoint (a chunk of a chunked tensor,
a chunk of the pack of small tensors, the manifest, a zarr.json, the
directory's state file) is flipped, truncated or deleted; then a fresh
manager restores (invariant 1 of docs/reliability.md):

* tensor data: ``restore_or_initialize()`` raises CorruptCheckpointError
  naming the object and changes nothing; ``fallback=True`` restores the
  previous checkpoint bit-exactly; ``cloudckpt.verify`` names the object.
* the manifest: a checkpoint exists iff its manifest exists and parses, so
  a deleted or unparsable manifest makes the previous checkpoint the latest.
* zarr.json: ``load`` does not read it (the manifest has everything); the
  restore is exact and ``verify`` names the damaged document.
* the state file: rebuilt from the manifests.

The per-object load errors of ``cloudckpt.load`` on their own are in
tests/test_errors.py; here is what a training job sees.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import cloudckpt
from cloudckpt.format.manifest import parse_manifest
from cloudckpt.layout import checkpoint_io
from cloudckpt.storage import open_storage

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import crashlib

KINDS = ["tensor-chunk", "pack-chunk", "manifest", "zarr-json", "state-file"]
DAMAGES = ["flip", "truncate", "delete"]
# on the object stores: each kind once, each damage at least once (the logic is storage-independent)
OBJECT_STORE_CASES = {("tensor-chunk", "flip"), ("pack-chunk", "truncate"), ("manifest", "truncate"), ("state-file", "delete"), ("zarr-json", "delete")}


def _manager(backend, keep=3):
    ckpt, live = crashlib.new_checkpoint()
    m = cloudckpt.CheckpointManager(
        ckpt, backend.url("run"), keep, storage_options=backend.storage_options, options=crashlib.STORE_OPTIONS
    )
    return m, ckpt, live


def _three_checkpoints(backend):
    m, ckpt, live = _manager(backend)
    for step in (1, 2, 3):
        crashlib.fill(live, step)
        ckpt.step = step
        m.save()
    return open_storage(backend.url("run"), backend.storage_options)


def _key_of(s, kind: str, n: int = 3) -> str:
    """Key (relative to the directory) of an object of ckpt-<n> of the given kind."""
    if kind == "state-file":
        return "checkpoint"
    if kind == "manifest":
        return f"ckpt-{n}/manifest.json"
    m = json.loads(s.read(f"ckpt-{n}/manifest.json"))
    objects = m["objects"]
    if kind == "tensor-chunk":
        chunked = next(a for a in m["arrays"] if "chunked" in a)
        key = objects[chunked["chunked"]["objects"][0]]["key"]
    elif kind == "pack-chunk":
        key = objects[m["pack"]["objects"][0]]["key"]
    else:
        key = next(o["key"] for o in objects if o["key"].endswith("/model/w/zarr.json"))
    return f"ckpt-{n}/{key}"


def _damage(s, key: str, damage: str) -> None:
    data = s.read(key)
    if damage == "flip":
        b = bytearray(data)
        b[0 if key.endswith((".json", "checkpoint")) else len(b) // 2] ^= 0x20
        s.write(key, bytes(b))
    elif damage == "truncate":
        s.write(key, data[: len(data) // 2])
    else:
        s.delete([key])


def _untouched(live) -> bool:
    return all(not a.any() for part in live.values() for a in part.values())


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_damage_is_never_restored_silently(backend, kind, damage):
    if backend.is_object_store and (kind, damage) not in OBJECT_STORE_CASES:
        pytest.skip("storage-independent case: run on local and memory")
    so = backend.storage_options
    s = _three_checkpoints(backend)
    key = _key_of(s, kind)
    obj_url = s.url_for(key)
    _damage(s, key, damage)
    m, ckpt, live = _manager(backend)

    if kind in ("tensor-chunk", "pack-chunk"):
        assert m.latest_checkpoint == backend.url("run", "ckpt-3")  # the manifest is intact: still listed
        with pytest.raises(cloudckpt.CorruptCheckpointError) as info:
            m.restore_or_initialize()
        assert obj_url in str(info.value), str(info.value)
        assert _untouched(live) and int(ckpt.step) == 0  # nothing restored, not even in part
        with pytest.raises(cloudckpt.CorruptCheckpointError, match=re.escape(obj_url)):
            cloudckpt.load(backend.url("run", "ckpt-3"), storage_options=so)
        report = cloudckpt.verify(backend.url("run"), storage_options=so)
        assert [d.url for d in report.damaged] == [obj_url]
        assert m.restore_or_initialize(fallback=True) == backend.url("run", "ckpt-2")
        assert int(ckpt.step) == 2 and crashlib.bit_exact(live, 2)
    elif kind == "manifest" and damage == "delete":
        # not a checkpoint any more (it exists iff its manifest exists)
        assert m.latest_checkpoint == backend.url("run", "ckpt-2")
        assert cloudckpt.latest_checkpoint(backend.url("run"), storage_options=so) == backend.url("run", "ckpt-2")
        with pytest.raises(cloudckpt.CheckpointNotFoundError) as info:
            cloudckpt.load(backend.url("run", "ckpt-3"), storage_options=so)
        assert obj_url in str(info.value)
        assert m.restore_or_initialize() == backend.url("run", "ckpt-2")
        assert crashlib.bit_exact(live, 2)
    elif kind == "manifest":
        # a damaged manifest numbered above the latest counts as the newest: a crash never leaves
        # one (it is written in one create-only request), so it is damage, and it is not skipped
        # silently: restoring raises, fallback=True goes back to the newest that restores
        assert m.latest_checkpoint == backend.url("run", "ckpt-3")
        assert cloudckpt.latest_checkpoint(backend.url("run"), storage_options=so) == backend.url("run", "ckpt-3")
        with pytest.raises(cloudckpt.CorruptCheckpointError) as info:
            cloudckpt.load(backend.url("run", "ckpt-3"), storage_options=so)
        assert obj_url in str(info.value)
        with pytest.raises(cloudckpt.CorruptCheckpointError, match=re.escape(backend.url("run", "ckpt-3"))):
            m.restore_or_initialize()
        assert _untouched(live) and int(ckpt.step) == 0
        assert m.restore_or_initialize(fallback=True) == backend.url("run", "ckpt-2")
        assert crashlib.bit_exact(live, 2)
        if damage != "delete":
            report = cloudckpt.verify(backend.url("run"), storage_options=so)
            assert obj_url in [d.url for d in report.damaged]
    elif kind == "zarr-json":
        # load reads the manifest and the chunks only: the data is intact and restores exactly
        assert m.restore_or_initialize() == backend.url("run", "ckpt-3")
        assert crashlib.bit_exact(live, 3)
        report = cloudckpt.verify(backend.url("run"), storage_options=so)
        assert [d.url for d in report.damaged] == [obj_url]
    else:  # the state file: a cache, rebuilt from the manifests
        assert m.latest_checkpoint == backend.url("run", "ckpt-3")
        assert m.restore_or_initialize() == backend.url("run", "ckpt-3")
        assert crashlib.bit_exact(live, 3)
        text = s.read("checkpoint").decode()
        assert 'model_checkpoint_path: "ckpt-3"' in text
        assert cloudckpt.verify(backend.url("run"), storage_options=so).ok


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_every_damaged_checkpoint_falls_back_until_none_restores(backend):
    s = _three_checkpoints(backend)
    for n in (3, 2):
        _damage(s, _key_of(s, "pack-chunk", n), "flip")
    m, _ckpt, live = _manager(backend)
    assert m.restore_or_initialize(fallback=True) == backend.url("run", "ckpt-1")
    assert crashlib.bit_exact(live, 1)
    _damage(s, _key_of(s, "pack-chunk", 1), "delete")
    m, _ckpt, live = _manager(backend)
    with pytest.raises(cloudckpt.CorruptCheckpointError, match=r"no checkpoint .* restores"):
        m.restore_or_initialize(fallback=True)
    assert _untouched(live)


@pytest.mark.parametrize("backend", ["local", "memory"], indirect=True)
def test_training_goes_on_after_a_fallback(backend):
    s = _three_checkpoints(backend)
    _damage(s, _key_of(s, "tensor-chunk"), "flip")
    m, ckpt, live = _manager(backend)
    assert m.restore_or_initialize(fallback=True) == backend.url("run", "ckpt-2")
    crashlib.fill(live, 3)
    ckpt.step = 3
    url = m.save()
    assert url not in (backend.url("run", "ckpt-2"), backend.url("run", "ckpt-3"))
    assert crashlib.bit_exact(cloudckpt.load(url, storage_options=backend.storage_options), 3)


@pytest.mark.parametrize("backend", ["local", "memory"], indirect=True)
def test_training_goes_on_after_a_damaged_manifest(backend):
    s = _three_checkpoints(backend)
    _damage(s, "ckpt-3/manifest.json", "truncate")
    m, ckpt, live = _manager(backend)
    assert m.restore_or_initialize(fallback=True) == backend.url("run", "ckpt-2")
    crashlib.fill(live, 3)
    ckpt.step = 3
    url = m.save()  # numbered past the damaged ckpt-3, which stays as it is
    assert url == backend.url("run", "ckpt-4")
    assert crashlib.bit_exact(cloudckpt.load(url, storage_options=backend.storage_options), 3)
    assert m.latest_checkpoint == cloudckpt.latest_checkpoint(backend.url("run"), storage_options=backend.storage_options) == url


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return type(a) is type(b) and a == b


def _flip_sweep(backend):
    """Every single-bit flip (bit 0 of each byte) of a manifest: detected, harmless, or silent."""
    s = _three_checkpoints(backend).child("ckpt-3")
    raw = s.read("manifest.json")
    reference = checkpoint_io.read_state(s, parse_manifest(raw, "m"))
    outcome = {"detected": 0, "harmless": 0, "silent": []}
    for i in range(len(raw)):
        b = bytearray(raw)
        b[i] ^= 0x01
        try:
            state = checkpoint_io.read_state(s, parse_manifest(bytes(b), "m"))
        except (cloudckpt.CheckpointError, KeyError):
            outcome["detected"] += 1
            continue
        if _same(reference, state):
            outcome["harmless"] += 1
        else:
            outcome["silent"].append(raw[max(0, i - 12) : i + 4].decode(errors="replace"))
    return len(raw), outcome


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_manifest_bit_flips_in_arrays_and_objects_are_always_detected(backend):
    """The array and object records (dtypes, shapes, offsets, keys, sizes, crc32c) are
    cross-checked: a flip there is always detected or harmless (e.g. in a timestamp)."""
    n, outcome = _flip_sweep(backend)
    assert outcome["detected"] > n // 2
    bad = [ctx for ctx in outcome["silent"] if '"arrays"' in ctx or '"objects"' in ctx or "crc32c" in ctx or "offset" in ctx]
    assert bad == []


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_every_manifest_bit_flip_is_detected_or_harmless(backend):
    _n, outcome = _flip_sweep(backend)
    assert outcome["silent"] == []
