"""Every error of the core: its type, that its message names the culprit, and
that nothing is written or destroyed on the way."""

from __future__ import annotations

import copy
import json
import logging
import traceback

import numpy as np
import pytest
import servers

import cloudckpt
from cloudckpt.format.manifest import FORMAT_VERSION, encode_manifest
from cloudckpt.layout import checkpoint_io
from cloudckpt.storage import RetryPolicy, open_storage

SECRET = "SECRET-abc123"
KEY_ID = "AKIDFAKEKEYID42"

# ---------------------------------------------------------------- helpers


_FILESYSTEMS: dict = {}


def inspect_fs(backend):
    """A sync fsspec filesystem to look at and damage what the library wrote (cached:
    a new s3fs/gcsfs client costs ~0.3 s on this machine)."""
    key = (backend.name, repr(backend.storage_options))
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = backend.filesystem()
    return _FILESYSTEMS[key]


def find_all(backend) -> list[str]:
    fs = inspect_fs(backend)
    try:
        return sorted(fs.find(backend.root))
    except FileNotFoundError:
        return []


def snapshot(backend) -> dict[str, bytes]:
    """Every object under the backend's root with its content."""
    fs = inspect_fs(backend)
    paths = find_all(backend)
    return dict(fs.cat(paths)) if paths else {}


def object_path(backend, url: str, key: str) -> str:
    """The filesystem path (for backend.filesystem()) of an object of a checkpoint."""
    full = f"{url}/{key}"
    return full if backend.name == "local" else full.split("://", 1)[1]


def full_text(exc: BaseException) -> str:
    """Message, chained causes and traceback of an exception: all a user could see."""
    return "".join(traceback.format_exception(exc))


STATE = {
    "big": np.arange(600, dtype="<f4").reshape(20, 30),  # its own array: 7 chunks of 3 rows, the last padded
    "small": np.arange(10, dtype="<i8"),  # packed
    "other": np.ones(5, ">f8"),  # packed, same pack chunk
    "step": 3,
}
OPTS = cloudckpt.StoreOptions(pack_threshold=1024, chunk_bytes=300)


def save(backend, state=STATE, name="ckpt-1"):
    return cloudckpt.save(backend.url(name), state, storage_options=backend.storage_options, options=OPTS)


# ---------------------------------------------------------------- unsupported leaves: nothing written


@pytest.mark.parametrize(
    ("leaf", "kind"),
    [
        (np.array([1, "x"], dtype=object), "object"),
        (object(), "unsupported type"),
        (np.zeros(3, dtype=[("a", "<f4"), ("b", "<i2")]), "structured"),
        ({1.5: "float key"}, "float"),
        ({(1, 2): "tuple key"}, "tuple"),
    ],
    ids=["object-array", "object", "structured-dtype", "float-key", "tuple-key"],
)
def test_unsupported_leaf_raises_typeerror_naming_it_and_writes_nothing(backend, leaf, kind):
    # a big valid array first: a naive writer would have uploaded it before meeting the bad leaf
    state = {"fine": np.zeros(50_000, "f4"), "model": {"layers": [1, {"bad": leaf}]}}
    with pytest.raises(TypeError) as info:
        cloudckpt.save(backend.url("ckpt-1"), state, storage_options=backend.storage_options)
    msg = str(info.value)
    assert "['model']['layers'][1]['bad']" in msg, msg
    assert kind in msg, msg
    assert find_all(backend) == []


# ---------------------------------------------------------------- missing checkpoint


def test_missing_checkpoint_names_the_url(backend):
    url = backend.url("ckpt-404")
    with pytest.raises(cloudckpt.CheckpointNotFoundError) as info:
        cloudckpt.load(url, storage_options=backend.storage_options)
    assert url in str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, cloudckpt.CheckpointError)
    with pytest.raises(cloudckpt.CheckpointNotFoundError, match="ckpt-404"):
        cloudckpt.info(url, storage_options=backend.storage_options)


def test_a_directory_of_checkpoints_gets_a_hint(backend):
    save(backend, {"x": 1}, name="run/ckpt-1")
    with pytest.raises(cloudckpt.CheckpointNotFoundError, match="directory of checkpoints"):
        cloudckpt.load(backend.url("run"), storage_options=backend.storage_options)


def test_missing_key_in_partial_load_names_it(backend):
    url = save(backend)
    with pytest.raises(KeyError) as info:
        cloudckpt.load(url, storage_options=backend.storage_options, keys=["small", "nope/deeper"])
    assert "nope" in str(info.value) and url in str(info.value)


# ---------------------------------------------------------------- damaged objects


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x40
    return bytes(b)


DAMAGE = {
    "flip": lambda fs, p: fs.pipe_file(p, _flip(fs.cat_file(p), len(fs.cat_file(p)) // 2)),
    "flip-padding": lambda fs, p: fs.pipe_file(p, _flip(fs.cat_file(p), -1)),
    "truncate": lambda fs, p: fs.pipe_file(p, fs.cat_file(p)[:-3]),
    "empty": lambda fs, p: fs.pipe_file(p, b""),
    "delete": lambda fs, p: fs.rm(p),  # rm, not rm_file: adlfs before 2025 has no rm_file
}


def _target(manifest: dict, kind: str) -> str:
    objects = manifest["objects"]
    if kind == "array-chunk":
        return objects[manifest["arrays"][0]["chunked"]["objects"][1] - 1]["key"]  # the padded edge chunk
    return objects[manifest["pack"]["objects"][0]]["key"]


# on the object stores, each damage and each kind of object once (the rest is storage-independent)
OBJECT_STORE_DAMAGE = {("array-chunk", "flip"), ("array-chunk", "truncate"), ("pack-chunk", "delete"),
                       ("pack-chunk", "truncate")}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("kind", ["array-chunk", "pack-chunk"])
def test_damaged_object_raises_corrupt_naming_it(backend, kind, damage):
    if backend.is_object_store and (kind, damage) not in OBJECT_STORE_DAMAGE:
        pytest.skip("storage-independent variant; covered on local and memory")
    if damage == "flip-padding" and kind == "pack-chunk":
        pytest.skip("the pack chunk here has no padding")
    storage = open_storage(backend.url("ckpt-1"), backend.storage_options)  # one client for the whole test
    url = checkpoint_io.write_checkpoint(storage, STATE, options=OPTS).url
    key = _target(checkpoint_io.read_manifest(storage), kind)
    DAMAGE[damage](inspect_fs(backend), object_path(backend, url, key))

    def load(keys=None):
        return checkpoint_io.read_state(storage, checkpoint_io.read_manifest(storage), keys)

    with pytest.raises(cloudckpt.CorruptCheckpointError) as info:
        load()
    assert f"{url}/{key}" in str(info.value), str(info.value)
    # a partial load that needs the object fails too; one that does not, works
    wanted = "big" if kind == "array-chunk" else "small"
    with pytest.raises(cloudckpt.CorruptCheckpointError, match=key.split("/")[0]):
        load([wanted])
    assert load(["step", "other"] if kind == "array-chunk" else ["step"])["step"] == 3


def test_partial_load_checks_the_crc_of_each_packed_tensor(backend):
    """A range read of one packed tensor is verified against that tensor's own crc32c."""
    rng = np.random.default_rng(0)
    state = {f"t{i}": rng.standard_normal(200).astype("<f4") for i in range(8)}  # 8 x 800 B in one 6400 B chunk
    storage = open_storage(backend.url("c"), backend.storage_options)
    url = checkpoint_io.write_checkpoint(storage, state).url
    m = checkpoint_io.read_manifest(storage)
    assert m["pack"]["objects"][1] - m["pack"]["objects"][0] == 1
    key = m["objects"][m["pack"]["objects"][0]]["key"]
    offset = m["arrays"][5]["packed"]["offset"]
    fs = inspect_fs(backend)
    path = object_path(backend, url, key)
    fs.pipe_file(path, _flip(fs.cat_file(path), offset + 7))  # inside t5

    def load(keys=None):
        return checkpoint_io.read_state(storage, checkpoint_io.read_manifest(storage), keys)

    with pytest.raises(cloudckpt.CorruptCheckpointError, match="t5") as info:
        load(["t5"])
    assert f"{url}/{key}" in str(info.value)
    np.testing.assert_array_equal(load(["t4"])["t4"], state["t4"])
    with pytest.raises(cloudckpt.CorruptCheckpointError):
        load()


@pytest.mark.parametrize(
    "damage",
    ["truncate", "flip-brace", "empty", "garbage", "not-an-object"],
)
def test_damaged_manifest_raises_corrupt_naming_it(backend, damage):
    if backend.is_object_store and damage in ("empty", "garbage", "not-an-object"):
        pytest.skip("storage-independent variant; covered on local and memory")
    url = save(backend)
    fs = inspect_fs(backend)
    path = object_path(backend, url, "manifest.json")
    data = fs.cat_file(path)
    new = {
        "truncate": data[: len(data) // 2],
        "flip-brace": _flip(data, 0),
        "empty": b"",
        "garbage": b"\xff\xfe\x00garbage",
        "not-an-object": b"[1, 2, 3]",
    }[damage]
    fs.pipe_file(path, new)
    with pytest.raises(cloudckpt.CorruptCheckpointError) as info:
        cloudckpt.load(url, storage_options=backend.storage_options)
    assert f"{url}/manifest.json" in str(info.value)


def test_deleted_manifest_means_no_checkpoint(backend):
    url = save(backend)
    inspect_fs(backend).rm(object_path(backend, url, "manifest.json"))
    with pytest.raises(cloudckpt.CheckpointNotFoundError, match=r"manifest\.json"):
        cloudckpt.load(url, storage_options=backend.storage_options)


def test_load_does_not_read_zarr_metadata(backend):
    """load() restores from the manifest and the chunks alone: damage to a zarr.json
    does not stop it. (That damage is for ``verify`` to report; zarr-python readers
    of the data group would see it.)"""
    storage = open_storage(backend.url("ckpt-1"), backend.storage_options)
    url = checkpoint_io.write_checkpoint(storage, STATE, options=OPTS).url
    fs = inspect_fs(backend)
    for o in checkpoint_io.read_manifest(storage)["objects"]:
        if o["key"].endswith("zarr.json"):
            fs.pipe_file(object_path(backend, url, o["key"]), b"{ damaged")
    seen: list[str] = []
    storage.add_hook(lambda op, u: seen.append(u))
    out = checkpoint_io.read_state(storage, checkpoint_io.read_manifest(storage))
    np.testing.assert_array_equal(out["big"], STATE["big"])
    assert not any(u.endswith("zarr.json") for u in seen), seen


# ---------------------------------------------------------------- format version


def _rewrite_manifest(backend, url, mutate) -> None:
    fs = inspect_fs(backend)
    path = object_path(backend, url, "manifest.json")
    m = json.loads(fs.cat_file(path))
    mutate(m)
    fs.pipe_file(path, encode_manifest(m))  # with a valid crc32c: validation itself must refuse


def test_newer_format_version_names_both_versions(backend):
    url = save(backend)
    _rewrite_manifest(backend, url, lambda m: m.__setitem__("format_version", 97))
    with pytest.raises(cloudckpt.FormatVersionError) as info:
        cloudckpt.load(url, storage_options=backend.storage_options)
    msg = str(info.value)
    assert "97" in msg and f"up to {FORMAT_VERSION}" in msg and url in msg, msg
    assert isinstance(info.value, cloudckpt.CheckpointError)


def test_format_version_zero_is_corrupt(backend):
    if backend.is_object_store:
        pytest.skip("storage-independent")
    url = save(backend)
    _rewrite_manifest(backend, url, lambda m: m.__setitem__("format_version", 0))
    with pytest.raises(cloudckpt.CorruptCheckpointError, match="format_version"):
        cloudckpt.load(url, storage_options=backend.storage_options)


# ---------------------------------------------------------------- hostile manifests: refused before any data read


def _set(path, value):
    def mutate(m):
        d = m
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value

    return mutate


def _obj(index_of, field, value):
    def mutate(m):
        m["objects"][index_of(m)][field] = value

    return mutate


def _chunk0(m):
    return m["arrays"][0]["chunked"]["objects"][0]


def _nested_json(m):
    m["metadata"] = {"x": json.loads("[" * 50 + "]" * 50)}


HOSTILE = {
    "dotdot-key": _obj(_chunk0, "key", "DATA/../../../etc/passwd"),
    "dotdot-escape-to-sibling": _obj(_chunk0, "key", "DATA/../../ckpt-2/manifest.json"),
    "absolute-key": _obj(_chunk0, "key", "/etc/passwd"),
    "key-outside-data": _obj(_chunk0, "key", "manifest.json"),
    "key-in-other-data-prefix": _obj(_chunk0, "key", "data-0000000000000000/big/c/0/0"),
    "other-bucket-url": _obj(_chunk0, "key", "s3://other-bucket/secret/c/0"),
    "gs-url-key": _obj(_chunk0, "key", "gs://other-bucket/x"),
    "backslash-key": _obj(_chunk0, "key", "DATA\\..\\..\\x"),
    "nul-key": _obj(_chunk0, "key", "DATA/x\x00y"),
    "empty-component": _obj(_chunk0, "key", "DATA//x"),
    "data-dotdot": _set(["data"], ".."),
    "data-absolute": _set(["data"], "/tmp/x"),
    "data-url": _set(["data"], "s3://bucket/x"),
    "data-nested": _set(["data"], "a/b"),
    "shape-not-nbytes": _set(["arrays", 0, "shape"], [20, 31]),
    "nbytes-not-shape": _set(["arrays", 0, "nbytes"], 12),
    "negative-dim": _set(["arrays", 0, "shape"], [-20, -30]),
    "object-size-not-chunk": _obj(_chunk0, "size", 10),
    "chunk-count": _set(["arrays", 0, "chunked", "objects"], [0, 2]),
    "chunk-range-outside": _set(["arrays", 0, "chunked", "objects"], [0, 999]),
    "chunk-range-reversed": _set(["arrays", 0, "chunked", "objects"], [5, 2]),
    "chunk-shape-not-contiguous": _set(["arrays", 0, "chunked", "chunk_shape"], [2, 15]),
    "pack-chunk-size": _set(["pack", "chunk_bytes"], 7),
    "packed-outside-pack": _set(["arrays", 1, "packed", "offset"], 10**6),
    "dtype-object": _set(["arrays", 0, "dtype"], "|O"),
    "dtype-void": _set(["arrays", 0, "dtype"], "|V4"),
    "dtype-code": _set(["arrays", 0, "dtype"], "__import__('os').system('true')"),
    "wrong-type-shape": _set(["arrays", 0, "shape"], "20,30"),
    "wrong-type-nbytes": _set(["arrays", 0, "nbytes"], 2400.0),
    "wrong-type-size": _obj(_chunk0, "size", "300"),
    "wrong-type-crc": _obj(_chunk0, "crc32c", -1),
    "bool-as-int": _set(["arrays", 0, "nbytes"], True),
    "wrong-type-objects": _set(["objects"], {"a": 1}),
    "wrong-type-arrays": _set(["arrays"], None),
    "wrong-type-tree": _set(["tree"], [1, 2]),
    "wrong-type-metadata": _set(["metadata"], "x"),
    "wrong-format-name": _set(["format"], "pickle"),
    "duplicate-array-ref": lambda m: m["tree"]["v"].__setitem__(1, copy.deepcopy(m["tree"]["v"][0])),
    "array-ref-out-of-range": lambda m: m["tree"]["v"][0].__setitem__("a", 99),
    "unknown-node-type": lambda m: m["tree"]["v"].__setitem__(3, {"t": "pickle", "v": "cos\nsystem\n"}),
    "duplicate-object-key": lambda m: m["objects"][1].__setitem__("key", m["objects"][0]["key"]),
    "dict-keys-mismatch": lambda m: m["tree"]["k"].append("extra"),
    "duplicate-dict-key": lambda m: m["tree"]["k"].__setitem__(1, m["tree"]["k"][0]),
    "malformed-int": lambda m: m["tree"]["v"].__setitem__(3, {"t": "int", "v": "1e9999"}),
    "huge-decimal-int": lambda m: m["tree"]["v"].__setitem__(3, {"t": "int", "v": "9" * 5000}),
    "malformed-float": lambda m: m["tree"]["v"].__setitem__(3, {"t": "float", "v": "float('nan')"}),
    "bits-on-a-number": lambda m: m["tree"]["v"].__setitem__(3, {"t": "float", "v": "0x1p+0", "bits": "0x" + "0" * 16}),
    "missing-field": lambda m: m.pop("objects"),
}


def _hostile(backend, name):
    storage = open_storage(backend.url(f"ckpt-{name}"), backend.storage_options)
    url = checkpoint_io.write_checkpoint(storage, STATE, options=OPTS).url
    data = checkpoint_io.read_manifest(storage)["data"]

    def mutate(m):
        HOSTILE[name](m)
        for o in m.get("objects") or []:
            if isinstance(o, dict) and isinstance(o.get("key"), str):
                o["key"] = o["key"].replace("DATA", data)

    _rewrite_manifest(backend, url, mutate)
    return storage


def _assert_refused_before_any_data_read(storage):
    url = storage.url
    seen: list[tuple[str, str]] = []
    storage.add_hook(lambda op, u: seen.append((op, u)))
    with pytest.raises(cloudckpt.CorruptCheckpointError) as info:
        checkpoint_io.read_state(storage, checkpoint_io.read_manifest(storage))
    assert f"{url}/manifest.json" in str(info.value)
    assert seen == [("read", f"{url}/manifest.json")], seen
    return info.value


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_hostile_manifest_is_refused_before_any_data_is_read(backend, name):
    _assert_refused_before_any_data_read(_hostile(backend, name))


@pytest.mark.parametrize("name", ["dotdot-key", "other-bucket-url", "object-size-not-chunk"])
def test_hostile_manifest_on_every_backend(backend, name):
    _assert_refused_before_any_data_read(_hostile(backend, name))


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_deeply_nested_manifest_json_is_corrupt_not_a_crash(backend):
    url = save(backend)
    inspect_fs(backend).pipe_file(object_path(backend, url, "manifest.json"), b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(cloudckpt.CorruptCheckpointError, match=r"manifest\.json"):
        cloudckpt.load(url)


# ---------------------------------------------------------------- existing checkpoint


def test_saving_onto_a_checkpoint_raises_and_changes_nothing(backend):
    so = backend.storage_options
    url = save(backend)
    before = snapshot(backend)
    with pytest.raises(cloudckpt.CheckpointExistsError) as info:
        save(backend, {"other": np.zeros(10_000)})
    assert url in str(info.value)
    assert isinstance(info.value, FileExistsError)
    after = snapshot(backend)
    assert after == before  # nothing written, nothing removed
    out = cloudckpt.load(url, storage_options=so)
    np.testing.assert_array_equal(out["big"], STATE["big"])


def test_losing_a_commit_race_removes_only_the_losers_data(backend):
    """Another writer committed while this save was writing data (no exists check)."""
    url = save(backend)
    before = snapshot(backend)
    storage = open_storage(url, backend.storage_options)
    with pytest.raises(cloudckpt.CheckpointExistsError, match="another writer"):
        checkpoint_io.write_checkpoint(storage, {"late": np.ones(1000)}, check_exists=False, options=OPTS)
    after = snapshot(backend)
    assert after == before
    assert cloudckpt.load(url, storage_options=backend.storage_options, keys=["step"]) == {"step": 3}


# ---------------------------------------------------------------- credentials never shown


def _s3_options(endpoint_url: str) -> dict:
    return dict(
        key=KEY_ID,
        secret=SECRET,
        endpoint_url=endpoint_url,
        anon=False,
        # fail fast: one botocore attempt per cloudckpt attempt
        config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 2},
    )


def _assert_no_secret(exc: BaseException, caplog) -> None:
    text = full_text(exc) + str(exc.args)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cloudckpt"))
    assert SECRET not in text and KEY_ID not in text, text
    assert SECRET not in ours and KEY_ID not in ours, ours
    # botocore's own DEBUG log shows the access key id (in the signed header), never the secret
    assert SECRET not in caplog.text


def test_credentials_never_appear_in_errors_wrong_endpoint(s3_server, caplog):
    caplog.set_level(logging.DEBUG)
    endpoint = f"http://127.0.0.1:{servers.free_port()}"  # nothing listens there
    so = _s3_options(endpoint)
    # the path of cloudckpt.save/load, with fewer retries than their default (each costs ~1 s of s3fs backoff)
    storage = open_storage("s3://cloudckpt-test/creds/ckpt-1", so, retry=RetryPolicy(attempts=2, base_delay=0))
    with pytest.raises(cloudckpt.StorageError) as info:
        checkpoint_io.write_checkpoint(storage, {"w": np.ones(3)})
    assert "s3://cloudckpt-test/creds/ckpt-1" in str(info.value)
    _assert_no_secret(info.value, caplog)
    with pytest.raises(cloudckpt.StorageError) as info:
        checkpoint_io.read_manifest(storage)
    assert info.value.transient and "manifest.json" in str(info.value)
    _assert_no_secret(info.value, caplog)
    assert SECRET not in repr(storage) and SECRET not in storage.url


def test_credentials_never_appear_in_errors_right_endpoint(s3_server, s3_bucket, caplog):
    caplog.set_level(logging.DEBUG)
    so = _s3_options(s3_server.endpoint_url)
    with pytest.raises(cloudckpt.CheckpointNotFoundError) as info:
        cloudckpt.load(f"s3://{s3_bucket}/creds-right/none", storage_options=so)
    _assert_no_secret(info.value, caplog)
    with pytest.raises(cloudckpt.StorageError) as info:  # no such bucket
        cloudckpt.save("s3://no-such-bucket-cloudckpt/ckpt-1", {"w": np.ones(3)}, storage_options=so)
    assert "no-such-bucket-cloudckpt" in str(info.value)
    _assert_no_secret(info.value, caplog)
    # a backend error whose text carries the secret (some SDKs echo their config) is redacted
    storage = open_storage(f"s3://{s3_bucket}/creds-right/c", so, retry=RetryPolicy(attempts=1))

    def leaky(op, url):
        raise OSError(f"signature mismatch for key={KEY_ID} secret={SECRET}")

    storage.add_hook(leaky)
    with pytest.raises(cloudckpt.StorageError) as info:
        storage.write("x", b"1")
    assert "signature mismatch" in str(info.value) and "***" in str(info.value)
    _assert_no_secret(info.value, caplog)
    # and a committed checkpoint's manifest holds no credential
    url = cloudckpt.save(f"s3://{s3_bucket}/creds-right/ok", {"w": np.ones(3)}, storage_options=so)
    manifest = open_storage(url, so).read("manifest.json")
    assert SECRET.encode() not in manifest and KEY_ID.encode() not in manifest
    info_text = repr(cloudckpt.info(url, storage_options=so))
    assert SECRET not in info_text and KEY_ID not in info_text


def test_bad_storage_options_error_hides_the_secret(s3_server):
    so = dict(_s3_options(s3_server.endpoint_url), not_an_option=SECRET)
    with pytest.raises((TypeError, cloudckpt.StorageError)) as info:
        cloudckpt.save("s3://cloudckpt-test/bad-opts/c", {"w": np.ones(1)}, storage_options=so)
    assert SECRET not in full_text(info.value)


# ---------------------------------------------------------------- bad URLs


@pytest.mark.parametrize("op", ["save", "load"])
def test_unknown_url_scheme_is_a_clear_valueerror(op):
    url = "nosuchscheme://bucket/ckpt-1"
    with pytest.raises(ValueError) as info:
        if op == "save":
            cloudckpt.save(url, {"w": np.ones(1)})
        else:
            cloudckpt.load(url)
    assert "nosuchscheme" in str(info.value) and "scheme" in str(info.value)


@pytest.mark.parametrize("op", ["save", "load"])
def test_a_path_that_is_a_file(tmp_path, op):
    path = tmp_path / "ckpt-1"
    path.write_bytes(b"not a checkpoint directory")
    with pytest.raises((NotADirectoryError, cloudckpt.CheckpointError)) as info:
        if op == "save":
            cloudckpt.save(str(path), {"w": np.ones(1)})
        else:
            cloudckpt.load(str(path))
    assert str(path) in str(info.value)
    assert path.read_bytes() == b"not a checkpoint directory"


def test_bad_argument_types():
    with pytest.raises(TypeError):
        cloudckpt.load(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cloudckpt.load("")
    with pytest.raises(TypeError):
        cloudckpt.load("memory://x/y", storage_options="key=1")  # type: ignore[arg-type]
